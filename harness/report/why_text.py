"""The why page's words: each section's table and sentences, computed from the roles' numbers (harness.report.why finds
the runs and writes the page), so that no figure on the page is typed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.core.campaign_file import WhyPlan
from harness.core.data_tag import DataTag
from harness.report.stats import Summary, fmt, summarize, verdict


def train_images(data: str) -> int:
    return DataTag.read(data).train


@dataclass(frozen=True)
class Role:
    """One run of the plan with its finished runs' numbers (no rows: not trained yet)."""

    ref: str  # group/name
    runs: pd.DataFrame
    s: Summary
    train_error: float  # mean final training error (running error of the last evaluation window) of its runs
    epochs: float  # epochs its runs trained: iterations x batch / training images
    augment: str

    @property
    def gap(self) -> float:
        return self.s.mean - self.train_error


AUGMENT_WORDS = {"none": "no augmentation", "flip": "flip only", "crop_flip": "pad-4 crop + flip",
                 "True": "pad-4 crop + flip", "False": "no augmentation"}


def role(rows: pd.DataFrame, ref: str, details: dict) -> Role:
    runs = rows[rows.ref == ref]
    ok = runs[runs.status == "FINISHED"]
    d = [details[r] for r in ok.run_id]
    epochs = np.mean([x["iters"] * x["batch_size"] / max(train_images(t), 1) for x, t in zip(d, ok.data,
                                                                                                 strict=True)]) \
        if len(ok) else math.nan
    return Role(ref, runs, summarize(runs), float(ok.train_error.mean()) if len(ok) else math.nan, float(epochs),
                d[0]["augment"] if d else "?")


def delta(a: Role, b: Role) -> tuple[float, str]:
    """a's mean test error minus b's, and its seed-noise verdict (stats.noise_verdict)."""
    if not (a.s.n and b.s.n):
        return math.nan, "—"
    return a.s.mean - b.s.mean, verdict(a.runs, b.runs, (a.ref, b.ref))


def epochs_words(values) -> str:
    """The epochs the runs trained, as a page says them: whole epochs, or one decimal below ten."""
    words = sorted({f"{e:.0f}" if e >= 10 else f"{e:.1f}" for e in values if not math.isnan(e)})
    return "–".join(words) or "?"


def variant_words(description: str) -> str:
    """What a run changed: a variant's own line (after "This variant: "), else its spec's description."""
    return description.split("This variant: ", 1)[-1]


def signed(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:+.2f}"


def log_finals(log: dict) -> list[tuple[str, float, float]]:
    """Each printed run's last point: (what, epoch, test accuracy %)."""
    return [(r["what"], r["points"][-1]["epoch"], r["points"][-1]["test_accuracy"]) for r in log["runs"]]


def log_point(log: dict, spec: str, epoch: float) -> dict | None:
    """The log's printed point of `spec` (group/name) with train and test accuracy nearest to `epoch`."""
    pts = [p for r in log["runs"] if r["spec"] == spec for p in r["points"] if "train_accuracy" in p]
    return min(pts, key=lambda p: abs(p["epoch"] - epoch)) if pts else None


def missing(roles: list[Role]) -> str:
    """The roles with no finished run yet, comma-separated ("" when all have one)."""
    return ", ".join(r.ref for r in roles if not r.s.n)


def answer(plan: WhyPlan, get: dict[str, Role], log: dict, paper: dict) -> list[str]:
    """The short answer, every figure in it computed from the page's runs and the log's and paper's figures."""
    finals = log_finals(log)
    low, high = min(a for _, _, a in finals), max(a for _, _, a in finals)
    paper_err = paper["test_error"]["resnet32"]
    base, both, net, recipe = (get[r] for r in (plan.baseline, plan.log_setup, plan.net, plan.recipe))
    said = [f"The log's runs end between {low:.2f} % and {high:.2f} % test accuracy ({100 - high:.2f}–"
            f"{100 - low:.2f} % error) against the paper's {paper_err:.2f} % error: {100 - high - paper_err:.2f} to "
            f"{100 - low - paper_err:.2f} points."]
    if not (base.s.n and both.s.n):
        said.append(f"At this budget the comparison needs {missing([base, both])}: not trained yet.")
        return ["## The answer", "", " ".join(said), ""]
    total, noise = delta(both, base)
    said.append(f"At about {epochs_words([base.epochs])} epochs here, the log's setup ({plan.log_setup}, "
                f"{fmt(both.s)}) errs {total:+.2f} points against the paper's recipe ({plan.baseline}, "
                f"{fmt(base.s)}; {noise}).")
    parts = [(f"the log's net alone ({plan.net})", net), (f"the log's recipe alone ({plan.recipe})", recipe)]
    known = [(what, delta(r, base)) for what, r in parts if r.s.n]
    if known:
        said.append("Of it, " + "; ".join(f"{what} costs {d:+.2f} ({v})" for what, (d, v) in known) + ".")
    if len(known) == 2:
        rest = total - sum(d for _, (d, _) in known)
        said.append(f"Together they cost {abs(rest):.2f} points {'more' if rest > 0 else 'less'} than the sum of the "
                    "two alone: net and recipe interact, and one-factor costs do not add up to the whole.")
    else:
        said.append(f"Not trained yet: {missing([net, recipe])}, so the gap is not split into net and recipe.")
    aug = [get[r] for r in plan.augmentation if get[r].s.n]
    if len(aug) >= 2:
        worst, best = max(aug, key=lambda r: r.s.mean), min(aug, key=lambda r: r.s.mean)
        d, v = delta(worst, best)
        said.append(f"On the log's setup, {AUGMENT_WORDS.get(worst.augment, worst.augment)} errs {d:+.2f} points "
                    f"against {AUGMENT_WORDS.get(best.augment, best.augment)} ({v}).")
    facts = sorted(((delta(get[r], base), r) for r in plan.factors if get[r].s.n), key=lambda x: -x[0][0])
    if facts:
        (d, v), r = facts[0]
        said.append(f"Of the single factors measured, {r} costs the most: {d:+.2f} points ({v}).")
    said.append(f"The paper's recipe reaches {base.s.mean:.2f} % here, {base.s.mean - paper_err:.2f} points above "
                f"its {paper_err:.2f} %: that part of the gap is training length, which this budget cannot show.")
    return ["## The answer", "", " ".join(said), ""]


def section_a(plan: WhyPlan, get: dict[str, Role], log: dict) -> list[str]:
    roles = [get[r] for r in plan.augmentation]
    lines = ["## a. Augmentation on the log's net and recipe", "",
             "| run | augmentation | epochs | train error at the end | test error: mean ± std (n) | test − train | "
             "best-over-training (selected on test) |", "|---|---|---|---|---|---|---|"]
    for r in roles:
        lines.append(f"| {r.ref} | {AUGMENT_WORDS.get(r.augment, r.augment)} | "
                     f"{'—' if math.isnan(r.epochs) else f'{r.epochs:.1f}'} | "
                     f"{'—' if math.isnan(r.train_error) else f'{r.train_error:.2f}'} | {fmt(r.s)} | "
                     f"{'—' if math.isnan(r.gap) else f'{r.gap:.2f}'} | "
                     f"{'—' if not r.s.n else f'{r.s.best_over_training:.2f}'} |")
    done = [r for r in roles if r.s.n]
    lines.append("")
    if missing(roles):
        lines.append(f"Not trained yet: {missing(roles)}.")
    for a, b in zip(done, done[1:], strict=False):
        d, v = delta(b, a)
        lines.append(f"- {b.ref} against {a.ref}: {signed(d)} points ({v}).")
    point = log_point(log, plan.log_setup, max((r.epochs for r in done), default=0))
    if point and done:
        log_train, log_test = 100 - point["train_accuracy"], 100 - point["test_accuracy"]
        near = min(done, key=lambda r: abs(r.train_error - log_train) + abs(r.gap - (log_test - log_train)))
        lines.append(f"- The log's nearest printed point with both figures, epoch {point['epoch']} "
                     f"({point['where']}): train error {log_train:.2f} %, test error {log_test:.2f} %, test − train "
                     f"{log_test - log_train:.2f}. "
                     f"Of our runs at about {epochs_words([near.epochs])} epochs, {near.ref} "
                     f"({AUGMENT_WORDS.get(near.augment, near.augment)}: train error {near.train_error:.2f} %, test − "
                     f"train {near.gap:.2f}) comes nearest to that signature (train error and test − train gap; "
                     f"the log's point is {point['epoch'] - near.epochs:.0f} epochs later in training).")
    return [*lines, ""]


def comparison_table(rows: list[tuple[str, Role]], base: Role) -> list[str]:
    lines = ["| row | run | test error: mean ± std (n) | Δ vs the paper's recipe | noise |", "|---|---|---|---|---|"]
    for what, r in rows:
        d, v = delta(r, base) if r is not base else (math.nan, "—")
        lines.append(f"| {what} | {r.ref} | {fmt(r.s)} | {signed(d)} | {v} |")
    return lines


def section_b(plan: WhyPlan, get: dict[str, Role]) -> list[str]:
    base = get[plan.baseline]
    rows = [("the paper's net and recipe", base), ("the log's net, the paper's recipe", get[plan.net]),
            ("the paper's net, the log's recipe", get[plan.recipe]), ("the log's net and recipe", get[plan.log_setup])]
    lines = ["## b. Net against recipe", "", *comparison_table(rows, base), ""]
    if gone := missing([r for _, r in rows]):
        lines += [f"Not trained yet: {gone}.", ""]
    return lines


SECOND_SEED_WITHIN = 3  # a single-seed factor whose Δ lies within this many seed stds gets a second seed


def pooled_spread(roles: list[Role]) -> tuple[float, int]:
    """The seed std pooled over the rows with two or more seeds (each variance weighted by its n − 1), and how many
    rows it pools: how far seeds alone move a row at this budget, which a single-seed row cannot say of itself."""
    rows = [r for r in {r.ref: r for r in roles}.values() if r.s.n > 1]
    dof = sum(r.s.n - 1 for r in rows)
    return (math.sqrt(sum((r.s.n - 1) * r.s.std ** 2 for r in rows) / dof) if dof else math.nan), len(rows)


def second_seeds(plan: WhyPlan, get: dict[str, Role]) -> list[str]:
    """Which single-seed factors are due a second seed: those whose Δ against the baseline lies within
    SECOND_SEED_WITHIN times the seed spread that slices a and b measured; one run there cannot tell a factor
    from its seed."""
    base = get[plan.baseline]
    single = [r for r in (get[x] for x in plan.factors) if r.s.n == 1]
    spread, rows = pooled_spread([get[x] for x in (plan.baseline, plan.log_setup, *plan.augmentation, plan.net,
                                                   plan.recipe)])
    if not (single and base.s.n) or math.isnan(spread):
        return []
    bound = SECOND_SEED_WITHIN * spread
    due = [f"{r.ref} ({r.s.mean - base.s.mean:+.2f})" for r in single if abs(r.s.mean - base.s.mean) < bound]
    return [f"Seed noise: slices a and b put the seed std at {spread:.2f} points (pooled over {rows} rows of two "
            f"seeds or more). A single-seed row whose Δ lies within {SECOND_SEED_WITHIN}× that (±{bound:.2f}) is "
            "due a second seed before its verdict stands: "
            + (", ".join(due) if due else "none of them, every single-seed Δ lies outside it") + ".", ""]


def section_c(plan: WhyPlan, get: dict[str, Role]) -> list[str]:
    base = get[plan.baseline]
    factors = sorted((get[r] for r in plan.factors), key=lambda r: -(delta(r, base)[0] if r.s.n else -math.inf))
    lines = ["## c. One factor at a time from the paper's recipe", "",
             "Sorted by cost; each run changes one thing of the baseline (its description in the run says what).", "",
             *comparison_table([(variant_words(r.runs.description.iloc[-1]) if len(r.runs) else "—", r)
                                for r in factors], base), "",
             "Chance is 90 % error on 10 balanced classes: a row near 90 did not learn.", ""]
    lines += second_seeds(plan, get)
    if gone := missing(factors):
        lines += [f"Not trained yet: {gone}.", ""]
    return lines
