"""summary.md: a campaign on one page, every run of it in one table beside the paper's figure, each row naming
the data and budget its number came from (the honesty column), with the depth effects and the Fig. 6 curves.

The table sits between two markers so that README.md quotes it as generated (harness.report.readme) rather
than as typed: a figure typed twice drifts from its records.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.report.campaign import GROUPS, splits
from harness.report.labels import campaign_label, row_label
from harness.report.looks import LOOKS, fig6_archs
from harness.report.pages import ABLATION_BASELINE, compare_rows, header, paper_cell, runs_of
from harness.report.stats import fmt, paper_figure, summarize, verdict
from harness.tracking import store as tracking

BEGIN, END = "<!-- summary:begin -->", "<!-- summary:end -->"


@dataclass(frozen=True)
class Row:
    spec: str  # group/spec, e.g. table6/resnet20
    seeds: str  # the finished seeds, e.g. "0, 1, 2"
    measured: str  # final-iteration error: mean ± std (n), naming failed and unfinished runs
    paper: str  # the paper's figure for this model, or why there is none
    source: str  # the data and budget the measured number came from
    speed: str  # training minutes per run and images/s, per machine where its seeds ran on several


def _order(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(group, spec) in the groups' order; within a group by architecture (the registry's order) and depth."""
    keys = runs[["group", "spec", "arch", "depth"]].drop_duplicates(["group", "spec"])
    archs = list(LOOKS)
    keys = keys.assign(g=keys.group.map(GROUPS.index), a=keys.arch.map(lambda a: archs.index(a) if a in archs else 99))
    return [(r.group, r.spec) for r in keys.sort_values(["g", "a", "depth", "spec"]).itertuples()]


def _paper(group: str, arch: str, depth: int, paper: dict) -> str:
    if group != "table6" or arch not in LOOKS:
        return "— (not in the paper)"
    if not LOOKS[arch].paper:
        return "— (curves only in Fig. 6)" if LOOKS[arch].fig6_panel is not None else "— (not in the paper)"
    return paper_cell(*paper_figure(paper, f"{arch}{depth}"))


@dataclass(frozen=True)
class Timing:
    """One finished run's training time (its record's train_seconds: evaluations are not in it) and where."""

    seconds: float
    images: float  # training images it went through: iterations x batch size
    device: str


def train_times(runs: pd.DataFrame) -> list[Timing]:
    c = tracking.client()
    out = []
    for r in runs[runs.status == "FINISHED"].itertuples():
        run = c.get_run(r.run_id)
        m, p = run.data.metrics, run.data.params
        # A store written before bookkeeping moved under system/ holds it under timing/, or older, bare.
        seconds, iters = (m.get(tracking.metric_name(k), m.get(tracking.record_key(k), m.get(k, 0)))
                          for k in ("train_seconds", "final_iteration"))
        if seconds:
            out.append(Timing(seconds, iters * int(p.get("batch_size", 0)), r.device))
    return out


def short_device(device: str) -> str:
    return device.removeprefix("cpu:x86_64 ").removeprefix("cpu:")


def by_device(times: list[Timing]) -> dict[str, list[Timing]]:
    out: dict[str, list[Timing]] = {}
    for t in times:
        out.setdefault(t.device, []).append(t)
    return dict(sorted(out.items()))


def _speed(times: list[Timing]) -> str:
    """Minutes per run and images/s, per machine: a mean time beside a mean rate holds only for runs of one machine
    (the rate is their images over their seconds, so the two agree); runs of several machines get one figure each."""
    if not times:
        return "—"
    parts = []
    for device, ts in by_device(times).items():
        secs = sum(t.seconds for t in ts)
        parts.append(f"{secs / len(ts) / 60:.1f} min, {sum(t.images for t in ts) / secs:.0f} img/s on "
                     f"{short_device(device)}" + (f" (n={len(ts)})" if len(ts) < len(times) else ""))
    return "; ".join(parts)


def title_tags(df: pd.DataFrame) -> list[str]:
    """The `data` tags a campaign is named by: every run's, so that its title covers each row under it."""
    return list(df.data)


STRANGER = "†"  # marks a seed whose run's commit this repository's history does not hold


def strangers(df: pd.DataFrame) -> pd.DataFrame:
    """The finished runs whose commit is not in this checkout's history (none where there is no history to ask):
    code no one can read again, which `report` names rather than silently uses."""
    done = df[df.status == "FINISHED"]
    known = tracking.commits_in_history(set(done.commit))
    return done.iloc[0:0] if known is None else done[~done.commit.isin(known) & (done.commit != "")]


def rows(df: pd.DataFrame, paper: dict, budget: float) -> list[Row]:
    tags = title_tags(df)
    unknown = set(strangers(df).run_id)
    out = []
    for group, spec in _order(df):
        runs = df[(df.group == group) & (df.spec == spec)]
        first = runs.iloc[0]
        done = runs[runs.status == "FINISHED"].sort_values("seed")
        seeds = [f"{r.seed}{STRANGER if r.run_id in unknown else ''}" for r in done.itertuples()]
        out.append(Row(f"{group}/{spec}", ", ".join(seeds) or "—", fmt(summarize(runs)),
                       _paper(group, first.arch, int(first.depth), paper),
                       row_label(str(first.data), tags, budget), _speed(train_times(runs))))
    return out


def depth_effects(df: pd.DataFrame) -> list[str]:
    """Shallowest against deepest Table 6 net of each architecture, with its seed noise: the claim of Fig. 6 (a
    deeper plain net ends worse, a deeper ResNet does not); with the depths between, whether the trend is one."""
    t6 = df[(df.group == "table6") & (df.status == "FINISHED")]
    lines = []
    for arch in fig6_archs():
        depths = sorted(set(t6[t6.arch == arch].depth))
        if len(depths) < 2:
            continue
        runs = {d: t6[(t6.arch == arch) & (t6.depth == d)] for d in depths}
        errors = {d: r.test_error.to_numpy(dtype=float) for d, r in runs.items()}
        lo, hi = errors[depths[0]], errors[depths[-1]]
        a, b = f"{LOOKS[arch].label}-{depths[0]}", f"{LOOKS[arch].label}-{depths[-1]}"
        between = (f"; depth {', '.join(map(str, depths))}: {', '.join(f'{e.mean():.2f}' for e in errors.values())}"
                   if len(depths) > 2 else "")
        lines.append(f"- {a} → {b}: {lo.mean():.2f} → {hi.mean():.2f} ({hi.mean() - lo.mean():+.2f} points; "
                     f"{verdict(runs[depths[-1]], runs[depths[0]], (b, a))}){between}")
    return lines


def ablation_effects(df: pd.DataFrame, descriptions: dict) -> list[str]:
    """Each finished ablation against the ablations' baseline (their own 45k/5k split), with its seed noise, under
    a line naming that baseline: one factor's cost, e.g. the ImageNet stem's, in the campaign's own figures."""
    base = runs_of(df, ABLATION_BASELINE)
    done = df[(df.group == "ablations") & (df.status == "FINISHED")]
    names = sorted(set(done.spec) - {ABLATION_BASELINE[1]})
    if base.empty or not names:
        return []
    b = summarize(base)
    lines = ["", f"One factor away from the paper's ResNet-32 recipe, final test error against the ablations' "
             f"baseline ({ABLATION_BASELINE[0]}/{ABLATION_BASELINE[1]}, trained on {splits(base)}):"]
    for r in compare_rows(df[df.group == "ablations"], base, names):
        what = descriptions.get(("ablations", r.name), "")
        lines.append(f"- {r.name}{f' — {what}' if what else ''}: {r.s.mean:.2f} vs {b.mean:.2f} "
                     f"({r.delta:+.2f} points; "
                     f"{verdict(df[(df.group == 'ablations') & (df.spec == r.name)], base, (r.name, 'the baseline'))})")
    return lines


def block(df: pd.DataFrame, paper: dict, budget: float, descriptions: dict) -> list[str]:
    """The table, the depth effects and the ablations' effects, between the markers README.md copies them by."""
    lines = [BEGIN, f"**{campaign_label(title_tags(df), budget)}**", "",
             "| run | seeds | ours: final test error (%), mean ± std (n) | paper (all 50k, 64k iterations) | "
             "ours from (data, budget) | training per run (images/s), machine |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.spec} | {r.seeds} | {r.measured} | {r.paper} | {r.source} | {r.speed} |"
              for r in rows(df, paper, budget)]
    if len(lost := strangers(df)):
        which = ", ".join(f"{r.group}/{r.spec} seed {r.seed} ({r.commit})" for r in lost.sort_values(
            ["group", "spec", "seed"]).itertuples())
        lines += ["", f"{STRANGER} trained at a commit this repository's history does not hold: {which}. Its number "
                  "stands, but the code that made it cannot be read again."]
        print(f"report: warning: {which}: commit not in this repository's history (marked {STRANGER})",
              file=sys.stderr)
    times = train_times(df)
    if times:
        runs = f"these {len(times)} runs" if len(times) > 1 else "this run"
        each = "; ".join(f"{sum(t.seconds for t in ts) / 3600:.1f} h on {short_device(d)} ({len(ts)} run"
                         f"{'s' if len(ts) > 1 else ''})" for d, ts in by_device(times).items())
        lines += ["", f"Training time of {runs}: {sum(t.seconds for t in times) / 3600:.1f} h in all: {each} "
                  "(their records' train_seconds; the test evaluations come on top; the machine of each run is its "
                  "record's)."]
    if effects := depth_effects(df):
        lines += ["", "Depth, final test error (Fig. 6: a deeper plain net ends worse, a deeper ResNet does not):",
                  *effects]
    return [*lines, *ablation_effects(df, descriptions), END]


def write_summary(df: pd.DataFrame, paper: dict, budget: float, official: bool, out: Path,
                  descriptions: dict) -> Path:
    title = campaign_label(title_tags(df), budget)
    lines = [header(title, df, budget, official, paper).rstrip("\n"), "", *block(df, paper, budget, descriptions)]
    if (df.group == "table6").any():  # figures() drew this campaign's curves
        lines += ["", "Fig. 6 in this campaign: test error (bold; shaded: ± one std over seeds where there are "
                  "several) and train error (thin dashed) against iteration, plain nets left, ResNets right.", "",
                  "![Fig. 6 curves](curves_table6.png)"]
    pages = [p for p in ("table6.md", "ablations.md", "ladder.md", "tuned.md") if (out / p).is_file()]
    lines += ["", "Pages: " + ", ".join(f"[{p}]({p})" for p in pages)] if pages else []
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path
