"""The why page: "I did everything the paper says, why does my ResNet land at 68-75 %?", answered from records.

A why-campaign (a campaign file with a `why:` section, harness.core.campaign_file.WhyPlan) names its runs by role:
the paper's recipe (the baseline), the failed reproduction's setup as its evidence reads it, that setup under each
augmentation, its net alone and its recipe alone on the paper's recipe, and single factors. This module finds those
runs in the store by the hashes the campaign file resolves to (so a page is of exactly the campaign's runs, whatever
else the store holds), sets them beside the log's printed figures (experiments/seed_log.yaml), and writes
reports/<campaign>/why.md with why.png. Every sentence of its answer is computed from the numbers on the page; a
run not trained yet is named as missing, never filled in.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from harness.core.campaign_file import Campaign, WhyPlan, campaign_runs, load_campaign
from harness.core.data_tag import DataTag
from harness.core.groups import CHECKOUT, load_paper
from harness.report.campaign import load_runs, newest_per_spec
from harness.report.labels import budget_words
from harness.report.pages import finished_on, on_official_test
from harness.report.stats import Summary, fmt, summarize, verdict
from harness.tracking import figures as plots
from harness.tracking import store as tracking

CAMPAIGNS = Path("experiments/campaigns")


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


def why_campaigns(root: Path = CHECKOUT) -> list[tuple[Path, Campaign]]:
    """The campaign files of the checkout that plan a why page."""
    found = []
    for path in sorted((root / CAMPAIGNS).glob("*.yaml")):
        camp = load_campaign(path)
        if camp.why is not None:
            found.append((path, camp))
    return found


def write_why_pages(out: Path, root: Path = CHECKOUT) -> list[Path]:
    """reports/<campaign>/why.md (and why.png) for each why-campaign with finished runs in the store."""
    written = []
    for path, camp in why_campaigns(root):
        page = write_why(out / path.stem, path, camp, root)
        if page is not None:
            written.append(page)
    return written


def campaign_rows(planned: list) -> pd.DataFrame:
    """The store's newest run of each of the campaign's runs, by spec_hash, on the data most of them trained on;
    column `ref` is group/name, `planned` the campaign's order."""
    df = newest_per_spec(load_runs(tuple(sorted({r.group for r in planned}))))
    if df.empty:
        return df
    best = pd.DataFrame()
    for data_id in sorted(set(df.data_id)):
        order = {r.spec_hash(data_id): i for i, r in enumerate(planned)}
        rows = df[(df.data_id == data_id) & df.spec_hash.isin(order)].copy()
        rows["ref"] = rows.group + "/" + rows.spec
        rows["planned"] = rows.spec_hash.map(order)
        if (rows.status == "FINISHED").sum() > (best.status == "FINISHED").sum() if len(best) else len(rows):
            best = rows
    return best


def _run_details(run_ids: list[str]) -> dict[str, dict]:
    """Batch size, augmentation, iterations and the train/test error histories of each run (the curves)."""
    c = tracking.client()
    out = {}
    for rid in run_ids:
        p = c.get_run(rid).data.params
        out[rid] = {"batch_size": int(p.get("batch_size", 0)), "augment": p.get("data.augment", "?"),
                    "iters": int(p.get("schedule.total_iters", 0)),
                    "train": tracking.metric_history(c, rid, "train_error"),
                    "test": tracking.metric_history(c, rid, "test_error")}
    return out


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


def load_log(root: Path, plan: WhyPlan) -> dict:
    return yaml.safe_load((root / plan.log).read_text())


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


def write_why(out: Path, path: Path, camp: Campaign, root: Path) -> Path | None:
    plan = camp.why
    planned_runs = campaign_runs(path, root=root)  # resolved once: the rows' hashes and the count of the plan
    rows = campaign_rows(planned_runs)
    finished = rows[rows.status == "FINISHED"] if len(rows) else rows
    if finished.empty:
        print(f"report: {path}: no finished runs of this campaign in the store; {out}/why.md left as it was",
              file=sys.stderr)
        return None
    details = _run_details(list(finished.run_id))
    log, paper = load_log(root, plan), load_paper()
    get = {ref: role(rows, ref, details) for ref in
           dict.fromkeys([plan.baseline, plan.log_setup, *plan.augmentation, plan.net, plan.recipe, *plan.factors])}
    out.mkdir(parents=True, exist_ok=True)
    planned = len(planned_runs)
    text = page(path, camp, rows, finished, get, log, paper, planned)
    figure(plan, get, details, finished, log, out / "why.png")
    (out / "why.md").write_text(text)
    print(f"report: wrote {out}/why.md, why.png ({len(finished)} of {planned} runs of {path.name})",
          file=sys.stderr)
    return out / "why.md"


def page(path: Path, camp: Campaign, rows, finished, get: dict[str, Role], log: dict, paper: dict,
         planned: int) -> str:
    plan = camp.why
    epochs = epochs_words(r.epochs for r in get.values() if r.s.n)
    official = bool(on_official_test(finished).all())
    data = sorted({DataTag.read(d).source for d in finished.data})
    images = sorted({DataTag.read(d).train for d in finished.data})
    budgets = ", ".join(f"batch {b} at {budget_words(x)}" for b, x in sorted(
        {(batch, x) for batch, x in zip(finished.batch_size, finished.budget, strict=True)}))
    commits = sorted({c for c in finished.commit if c})
    paper_epochs = 64000 * 128 / 50000
    lines = [
        f"# Why 68–75 %? The seed log's setup against the paper's recipe, about {epochs} epochs per run on "
        f"{', '.join(data)}",
        "",
        f"- Campaign: `{CAMPAIGNS / path.name}` (`python -m harness table --campaign {CAMPAIGNS / path.name}`): "
        f"{len(finished)} of {planned} runs finished",
        f"- Measured: {'test error (%) on the official CIFAR-10 test set' if official else 'held-out test error (%)'}"
        f" after about {epochs} epochs ({budgets}, as fractions of the paper's 64k iterations, so every run sees "
        "about the same number of images): NOT CIFAR-10 test error at the paper's budget",
        f"- Data: {', '.join(data)}, {', '.join(f'{n:,}' for n in images)} training images (each run's split is its "
        "spec's; see its run)",
        f"- Budget: {', '.join(f'{b:g}' for b in sorted(set(finished.budget), reverse=True))}",
        f"- Device: {', '.join(sorted(set(finished.device)))}",
        f"- Date: {finished_on(finished)} (the newest run's end; generated by `python -m harness report`)",
        f"- The log: its printed figures in `{plan.log}`, from {log['source']}",
        f"- Paper: {paper['source']}: ResNet-32 {paper['test_error']['resnet32']:.2f} % test error "
        f"({100 - paper['test_error']['resnet32']:.2f} % accuracy) at 64k iterations",
        "",
    ]
    if commits:
        lines.insert(6, f"- Commits: {', '.join(commits)}")
    lines += answer(plan, get, log, paper)
    lines += section_a(plan, get, log)
    lines += section_b(plan, get)
    lines += section_c(plan, get)
    last = max(p["epoch"] for r in log["runs"] for p in r["points"])
    lines += [f"## What about {epochs} epochs cannot show", "",
              f"- The paper's {paper['test_error']['resnet32']:.2f} % is ResNet-32 after 64k iterations (about "
              f"{paper_epochs:.0f} epochs of 50k images at batch 128), its lr divided by 10 at half and three "
              f"quarters of them: here every run stops at about {epochs} epochs, so the paper's recipe itself is far "
              "from its figure, and the baseline's error is the yardstick, not the paper's.",
              f"- The log's printed runs go on to epoch {last}: their plateau drops and their long overfit lie past "
              f"this budget. A plateau patience longer than the run never fires, so the log's recipe trains here "
              "at the constant lr its first epochs had.",
              "- float32 stands in for the log's float64; every other setting of the log's runs is its spec's.", "",
              "![why](why.png)", ""]
    return "\n".join(lines)


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


def section_c(plan: WhyPlan, get: dict[str, Role]) -> list[str]:
    base = get[plan.baseline]
    factors = sorted((get[r] for r in plan.factors), key=lambda r: -(delta(r, base)[0] if r.s.n else -math.inf))
    lines = ["## c. One factor at a time from the paper's recipe", "",
             "Sorted by cost; each run changes one thing of the baseline (its description in the run says what).", "",
             *comparison_table([(variant_words(r.runs.description.iloc[-1]) if len(r.runs) else "—", r)
                                for r in factors], base), "",
             "Chance is 90 % error on 10 balanced classes: a row near 90 did not learn.", ""]
    if gone := missing(factors):
        lines += [f"Not trained yet: {gone}.", ""]
    return lines


def figure(plan: WhyPlan, get: dict[str, Role], details: dict, finished: pd.DataFrame, log: dict, path: Path) -> None:
    """Left: the augmentation runs' train and test error by epoch beside the log's printed points; right: each
    measured factor's cost against the baseline."""
    curves = []
    for ref in plan.augmentation:
        for rid, data in finished[finished.ref == ref][["run_id", "data"]].itertuples(index=False):
            d, n = details[rid], max(train_images(data), 1)
            per = d["batch_size"] / n
            curves.append((f"{ref} ({AUGMENT_WORDS.get(d['augment'], d['augment'])})",
                           [(it * per, v) for it, v in d["train"]], [(it * per, v) for it, v in d["test"]]))
    points = [(r["what"], [(p["epoch"], 100 - p.get("train_accuracy", math.nan), 100 - p["test_accuracy"])
                           for p in r["points"]]) for r in log["runs"]]
    base = get[plan.baseline]
    costs = [(r.ref, *delta(r, base)[:1], r.s.std) for r in (get[x] for x in [plan.net, plan.recipe, plan.log_setup,
                                                                              *plan.factors]) if r.s.n and base.s.n]
    plots.why_figure(curves, points, [(name, d, 0.0 if math.isnan(s) else s) for name, d, s in costs],
                     f"cost vs {plan.baseline} ({base.s.mean:.2f} %)" if base.s.n else "cost (no baseline yet)", path)
