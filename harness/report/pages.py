"""The report's pages: Table 6 vs the paper, the ablations, the tuned schedules and the "why the gap" ladder.

Honesty rules, enforced here rather than left to the reader:
- the paper's figures stay in their own column; a measured number is called "CIFAR-10 test error" only
  when every run of the page trained on all 50,000 training images, tested on the official 10,000 and ran at
  budget 1.0, read from each run's `data` tag (its split sizes) and budget, so that records whose
  official_test_set tag was set from the file alone are labelled by what they trained on;
- each comparison is against a baseline trained on the same split, named on the page, or says it has none;
- every header names the data, budget, device and date;
- a difference is called real only when it is outside seed noise (stats.noise_verdict);
- beside the final-iteration test error stands the best-over-training test error of the same runs: what a
  repository that picks its best epoch on the test set would have claimed.
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.core.data_tag import DataTag
from harness.core.models import build_model, count_params
from harness.core.spec import ModelSpec
from harness.report.campaign import splits
from harness.report.looks import LOOKS
from harness.report.stats import Summary, fmt, noise_verdict, paper_figure, summarize, verdict


def on_official_test(df: pd.DataFrame) -> pd.Series:
    """Per run: tested on CIFAR-10's official 10,000 images (the `data` tag says so since the test set is known by
    its bytes)."""
    return df.data.map(lambda d: (t := DataTag.read(d)).official and t.test == 10000).astype(bool)


def cifar10_runs(df: pd.DataFrame) -> pd.Series:
    """Per run: its number is CIFAR-10 test error (all 50,000 images trained, none held out, the official test set,
    budget 1.0)."""
    return pd.Series([DataTag.read(d).cifar10_test_error(b) for d, b in zip(df.data, df.budget, strict=True)],
                     index=df.index, dtype=bool)


def is_cifar10(df: pd.DataFrame) -> bool:
    """Whether a page's numbers may be called CIFAR-10 test error: every one of its runs is."""
    return bool(len(df)) and bool(cifar10_runs(df).all())


def measured(df: pd.DataFrame, budget: float, official: bool) -> str:
    """What a page's numbers are, from what its runs trained on."""
    if official:
        return "CIFAR-10 test error (%): all 50,000 training images, official test set, budget 1.0"
    trained = ", ".join(sorted({f"{DataTag.read(d).train:,}" for d in df.data}))
    if len(df) and budget == 1.0 and bool(on_official_test(df).all()):
        return (f"test error (%) on the official CIFAR-10 test set after training on {trained} images (the rest "
                "held out for validation), budget 1.0: not the paper's Table 6 setting, which trains on all 50,000")
    if len(df) and bool(on_official_test(df).all()):
        return (f"test error (%) on the official CIFAR-10 test set after training on {trained} images at budget "
                f"{budget:g} ({budget * 64000:.0f} of the paper's 64,000 iterations): NOT the paper's budget, "
                "comparable with the paper's column only as a trend")
    return (f"error (%) on the held-out test split of `{data_name(df)}` at budget {budget:g} "
            f"({budget * 64000:.0f} of the paper's 64,000 iterations): NOT CIFAR-10 test error, "
            "not comparable with the paper's column except as a trend")


def device_lines(df: pd.DataFrame) -> list[str]:
    """A page's `- Device:` line and, where its runs come from several machines, a `- Machines:` line saying so:
    the machines' kernels round differently, so a Δ between rows trained on different machines carries that too,
    not seed noise alone. The device line keeps each machine's name first, as the reports index quotes it."""
    counts = sorted(df.device.value_counts().items())
    if len(counts) < 2:
        return [f"- Device: {', '.join(d for d, _ in counts)}"]
    return [f"- Device: {', '.join(f'{d} ({n} run' + ('s' if n > 1 else '') + ')' for d, n in counts)}",
            f"- Machines: {len(counts)} (a CPU or GPU and its thread count each): a Δ between rows of different "
            "machines also measures the machines (their kernels round differently), not seed noise alone"]


def header(title: str, df: pd.DataFrame, budget: float, official: bool, paper: dict) -> str:
    devices = "\n".join(device_lines(df))
    data = f"{data_name(df)} (train/val split: {splits(df)}; each row names its own)"
    official = official and is_cifar10(df)
    what = measured(df, budget, official)
    if not official and "budget" not in title:  # a short run's page says so where it is linked from: its title
        title = f"{title} (budget {budget:g} on {data_name(df)}: not CIFAR-10 test error)"
    return (f"# {title}\n\n"
            f"- Measured: {what}\n- Data: {data}\n- Budget: {budget:g}\n{devices}\n"
            f"- Date: {finished_on(df)} (the newest run's end; generated by `python -m harness report`)\n"
            f"- Paper: {paper['source']}\n\n")


def finished_on(df: pd.DataFrame) -> str:
    """The day the page's newest run ended (UTC): a page rebuilt from the same records reads the same. Runs whose
    records keep no times (format 1) count for none."""
    end = int(df.end_time.max()) if "end_time" in df and len(df) else 0
    return dt.datetime.fromtimestamp(end / 1000, dt.timezone.utc).date().isoformat() if end else "unknown"


def paper_cell(mean, std, best) -> str:
    if mean is None or pd.isna(mean):
        return "— (curves only in Fig. 6)"
    if std is None or pd.isna(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f} (best {best:.2f})"


def data_name(df: pd.DataFrame) -> str:
    """The data's file (or source) name, without the split sizes the `data` tag adds."""
    return DataTag.read(sorted(set(df.data))[0]).source if len(df) else "?"


def table6(df: pd.DataFrame, paper: dict, budget: float, official: bool, out: Path) -> pd.DataFrame:
    t6 = df[df.group == "table6"]
    official = official and is_cifar10(t6)
    rows = []
    for arch, look in LOOKS.items():
        for depth in sorted(set(t6[t6.arch == arch].depth)):
            runs = t6[(t6.arch == arch) & (t6.depth == depth)]
            s = summarize(runs)
            p, p_std, p_best = paper_figure(paper, f"{arch}{depth}") if look.paper else (None, None, None)
            rows.append({
                "model": f"{look.label}-{depth}", "arch": arch, "depth": depth, "split": splits(runs),
                "params_M": round(count_params(build_model(ModelSpec(arch=arch, depth=depth))) / 1e6, 2),
                "paper_test_error": p, "paper_std": p_std, "paper_best_run": p_best,
                "measured_mean": round(s.mean, 2), "measured_std": round(s.std, 2),
                "n": s.n, "best_seed": round(s.best, 2),
                "delta_vs_paper": round(s.mean - p, 2) if (official and p is not None and s.n) else None,
                "best_over_training_if_selected_on_test": round(s.best_over_training, 2),
                "failed": s.failed, "measured": fmt(s)})
    tab = pd.DataFrame(rows)
    tab.drop(columns=["measured", "arch"]).to_csv(out / "table6.csv", index=False)
    col = "CIFAR-10 test error" if official else "measured error (this data/budget)"
    # The title says what the numbers are: a short run or a subset is not a reproduction of Table 6.
    title = ("Table 6 (He et al. 2015) reproduced: CIFAR-10 test error" if official else
             f"Table 6 (He et al. 2015) rerun at budget {budget:g} on {data_name(t6 if len(t6) else df)}: "
             "not CIFAR-10 test error")
    lines = [header(title, t6, budget, official, paper),
             f"| model | params (M) | train/val | paper test error | {col}: mean ± std (n) | best seed (final error) | "
             "Δ vs paper | best-over-training (selected on test) |", "|---|---|---|---|---|---|---|---|"]
    for r in tab.itertuples():
        delta = f"{r.delta_vs_paper:+.2f}" if r.delta_vs_paper is not None and not pd.isna(r.delta_vs_paper) \
            else "not comparable"
        paper_col = paper_cell(r.paper_test_error, r.paper_std, r.paper_best_run)
        lines.append(f"| {r.model} | {r.params_M} | {r.split} | {paper_col} | {r.measured} | {r.best_seed:.2f} | "
                     f"{delta} | {r.best_over_training_if_selected_on_test:.2f} |")
    lines += ["", "The last column is the mean over seeds of the *lowest* test error seen at any evaluation point. "
              "Reporting it is selecting on the test set, which many popular reproductions do; the gap to the "
              "final-iteration column is how much that inflates a claim. No decision in this harness reads it."]
    for r in tab[tab.paper_best_run.notna()].itertuples():
        lines += ["", f"{r.model}: the paper's Table 6 figure {r.paper_best_run:.2f} is the best of its runs; the "
                  f"paper column shows their mean ± std ({r.paper_test_error:.2f} ± {r.paper_std:.2f}) instead, and "
                  "Δ is taken from that mean, because our column is a mean over seeds, not a best run."]
    res = tab[tab.model.str.startswith("ResNet")]
    if len(res) >= 2:
        lo, hi = f"ResNet-{res.depth.min()}", f"ResNet-{res.depth.max()}"
        a = t6[(t6.arch == "resnet") & (t6.depth == res.depth.min()) & (t6.status == "FINISHED")].test_error
        b = t6[(t6.arch == "resnet") & (t6.depth == res.depth.max()) & (t6.status == "FINISHED")].test_error
        lines += ["", f"Depth effect, {lo} vs {hi}: "
                  f"{noise_verdict(a.to_numpy(), b.to_numpy(), (lo, hi))}."]
    (out / "table6.md").write_text("\n".join(lines) + "\n")
    return tab


@dataclass(frozen=True)
class Compared:
    """A row set against a baseline (an ablation, a tuned spec against the paper's schedule)."""

    name: str
    s: Summary
    delta: float  # mean minus the baseline's mean
    split: str
    noise: str  # stats.noise_verdict against the baseline


def compare_rows(df_rows: pd.DataFrame, base: pd.DataFrame, order: list[str]) -> list[Compared]:
    b = summarize(base)
    out = []
    for name in order:
        runs = df_rows[df_rows.spec == name]
        s = summarize(runs)
        out.append(Compared(name, s, s.mean - b.mean, splits(runs),
                            verdict(runs, base, ("this row", "the baseline")) if b.n else "— (no baseline)"))
    return out


# The baselines a comparison may stand on, as (group, spec, what it is): the ablations' (the 45k/5k split) and
# Table 6's (all 50k images). A comparison takes the one trained on its own split.
ABLATION_BASELINE = ("ablations", "baseline", "ResNet-32 on the paper's recipe and the ablations' 45k/5k split")
TABLE6_BASELINE = ("table6", "resnet32", "ResNet-32 on the paper's recipe, all 50k training images")


def runs_of(df: pd.DataFrame, ref: tuple[str, str, str]) -> pd.DataFrame:
    return df[(df.group == ref[0]) & (df.spec == ref[1])]


def baseline_line(page: str, base: pd.DataFrame, refs: list[tuple[str, str, str]], split: str) -> str:
    """The page's line naming its baseline, or saying that none was found and which spec it looked for (also said
    by the report command, on stderr)."""
    if len(base):
        g, name, what = refs[0]
        return f"Baseline: {g}/{name} (experiments/{g}/{name}.yaml: {what}; {splits(base)}), {fmt(summarize(base))}.\n"
    looked = " or ".join(f"{g}/{name} (experiments/{g}/{name}.yaml)" for g, name, _ in refs)
    msg = (f"no baseline trained on this page's split ({split}) in this campaign: looked for {looked}; Δ and noise "
           "need its runs (train it at the same budget on the same data)")
    print(f"report: {page}: {msg}", file=sys.stderr)
    return f"Baseline: none: {msg}.\n"


def ablations(df: pd.DataFrame, paper: dict, budget: float, official: bool, out: Path, descriptions: dict) -> None:
    base = runs_of(df, ABLATION_BASELINE)
    ab = df[df.group == "ablations"]
    rows = compare_rows(ab, base, sorted(set(ab.spec) - {ABLATION_BASELINE[1]}))
    lines = [header("Ablations: one factor away from the paper's ResNet-32 recipe", ab, budget, official, paper),
             baseline_line("ablations.md", base, [ABLATION_BASELINE], splits(ab)),
             "| ablation | what changed | train/val | error: mean ± std (n) | Δ vs baseline | noise | "
             "best-over-training (selected on test) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.s
        delta = f"{r.delta:+.2f}" if s.n and len(base) else "—"
        lines.append(f"| {r.name} | {descriptions.get(('ablations', r.name), '')} | {r.split} | {fmt(s)} | "
                     f"{delta} | "
                     f"{r.noise if s.n else '—'} | {best_cell(s)} |")
    lines += ["", "Chance is 90 % error on 10 balanced classes: a row near 90 did not learn."]
    (out / "ablations.md").write_text("\n".join(lines) + "\n")


def twin_of(df: pd.DataFrame, runs: pd.DataFrame) -> tuple[list[tuple[str, str, str]], pd.DataFrame]:
    """The paper's schedule a tuned spec's runs are set against, as (the refs looked for, the runs found): the spec
    its study tuned, trained as it is at the same budget and data (`tuned.source`: same net, split and recipe but
    the schedule), else, for a spec that does not name its source, the paper's recipe on its split."""
    sources = sorted(set(runs.tuned_source) - {""})
    if sources:
        src = Path(sources[0])
        ref = (src.parent.name, src.stem, "the spec its study tuned, trained with its own schedule, the paper's")
        return [ref], runs_of(df, ref)
    match = [r for r in (ABLATION_BASELINE, TABLE6_BASELINE) if len(runs_of(df, r))
             and splits(runs_of(df, r)) == splits(runs)]
    return (match or [ABLATION_BASELINE, TABLE6_BASELINE]), (runs_of(df, match[0]) if match else df.iloc[:0])


def tuned(df: pd.DataFrame, paper: dict, budget: float, official: bool, out: Path, descriptions: dict) -> bool:
    """Tuned schedules (chosen on validation by `harness tune`) vs the paper's, on test error measured once: each
    tuned spec against its own twin (twin_of), so a ResNet-20 schedule tuned on 45k/5k meets ResNet-20 on 45k/5k."""
    tu = df[df.group == "tuned"]
    if tu.empty:
        return False
    lines = [header("Tuned LR schedule vs the paper's", tu, budget, official, paper)]
    rows = []
    for name in sorted(set(tu.spec)):
        runs = tu[tu.spec == name]
        refs, base = twin_of(df, runs)
        line = baseline_line("tuned.md", base, refs, splits(runs)).replace("Baseline:", f"{name}: paper schedule:", 1)
        lines.append(f"- {line.strip()}")
        rows += [(r, refs[0], base) for r in compare_rows(runs, base, [name])]
    lines += ["", "Tuned specs were selected on the validation split only; this table is the first time their test "
              "error is measured.\n",
              "| tuned spec | how it was chosen | train/val | error: mean ± std (n) | paper schedule | its error | "
              "Δ vs paper schedule | noise | best-over-training (selected on test) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r, ref, base in rows:
        delta = f"{r.delta:+.2f}" if r.s.n and len(base) else "—"
        lines.append(f"| {r.name} | {descriptions.get(('tuned', r.name), '')} | {r.split} | {fmt(r.s)} "
                     f"| {ref[0]}/{ref[1]} | {fmt(summarize(base)) if len(base) else '—'} "
                     f"| {delta} | {r.noise} | {best_cell(r.s)} |")
    (out / "tuned.md").write_text("\n".join(lines) + "\n")
    return True


def best_cell(s: Summary) -> str:
    return f"{s.best_over_training:.2f}" if s.n else "—"


def rung_number(name: str) -> int:
    """Rungs are named `<n>_<what>`: ordered by n as a number (10 after 9, not after 1)."""
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1_000_000


RUNG_ORDER = ("Rung order: first the length of training (the seed log's early-stopped run of up to 5000 epochs to "
              "the paper's fixed 64k iterations), so that every later rung trains as long as the paper's; then the "
              "changes that should not move the error (numerics, then the split), so "
              "that each is checked as neutral before anything real is stacked on it; then the architecture from "
              "the input side (stem, body, init, shortcuts), because the ImageNet stem shrinks a 32x32 image to 8x8 "
              "before the first block, a loss no optimiser can undo; then the optimisation (optimiser, weight "
              "decay), because the schedule's lr drops only mean something for SGD's lr 0.1; then the schedule; "
              "last the batch size and the amount of training data, the smallest changes. Each Δ is what that "
              "one change bought against the rung before it, with its seed noise. The rungs, as their specs "
              "describe them:")


def ladder_rungs(df: pd.DataFrame, descriptions: dict) -> list[tuple[str, pd.DataFrame, str]]:
    """The ladder's rungs in order; the Table 6 ResNet-32 closes it unless a rung already is that recipe."""
    lad = df[df.group == "ladder"]
    names = sorted(set(lad.spec), key=lambda n: (rung_number(n), n))
    rungs = [(n, lad[lad.spec == n], descriptions.get(("ladder", n), "")) for n in names]
    base = df[(df.group == "table6") & (df.spec == "resnet32")]
    if not set(base.spec_hash) & set(lad.spec_hash):
        what = descriptions.get(("table6", "resnet32"), "")
        rungs.append(("paper_resnet32", base, "Last rung: the paper's ResNet-32 recipe, the table6/resnet32 runs"
                      + (f" ({what})" if what else "")))
    return rungs


def ladder(df: pd.DataFrame, paper: dict, budget: float, official: bool, out: Path, descriptions: dict):
    lad = df[df.group == "ladder"]
    rungs = ladder_rungs(df, descriptions)
    lines = [header("Why the gap: from the seed log's setup to the paper's recipe, one factor per rung", lad,
                    budget, official, paper), RUNG_ORDER, ""]
    lines += [f"{i}. {name}: {desc or '(no description)'}" for i, (name, _, desc) in enumerate(rungs)]
    lines += ["", "| rung | change | train/val | error: mean ± std (n) | Δ vs previous rung | noise | "
              "best-over-training (selected on test) |", "|---|---|---|---|---|---|---|"]
    prev = None
    bars = []
    for name, runs, desc in rungs:
        s = summarize(runs)
        delta = f"{s.mean - prev.mean:+.2f}" if prev and s.n and prev.n else "—"
        noise = noise_verdict(s.values, prev.values, ("this rung", "the previous rung")) if prev else "—"
        lines.append(f"| {name} | {desc} | {splits(runs)} | {fmt(s)} | {delta} | {noise} | {best_cell(s)} |")
        bars.append((name, s))
        prev = s
    if bars and bars[0][1].n and bars[-1][1].n:
        total = bars[-1][1].mean - bars[0][1].mean
        lines += ["", f"Whole ladder: {bars[0][1].mean:.2f} → {bars[-1][1].mean:.2f} ({total:+.2f} points)."]
        if total > 0 and budget < 1:  # at the paper's budget this reading of a backwards ladder does not hold
            lines += ["", f"At this budget ({budget:g}) the ladder runs backwards: the paper's recipe (SGD at lr 0.1 "
                      "with drops at 50 % and 75 % of the run) needs its 64k iterations, while Adam's fast start "
                      "wins a short run. This measures short-run behaviour, not the gap at the paper's budget."]
    (out / "ladder.md").write_text("\n".join(lines) + "\n")
    return bars
