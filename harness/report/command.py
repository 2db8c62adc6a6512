"""`report`: reports/ from MLflow alone, the pages of one campaign (campaign.py picks it, pages.py writes its
markdown, plots.py its figures) and bench.md from the kept `bench --json` lines.

A page of a group the campaign has no runs of is left as it was (it may be a committed result of a long campaign),
but never unsaid: the command names what it left and which runs that page is of.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from harness.core.groups import REPORTED, load_paper
from harness.report.campaign import (
    campaigns,
    descriptions,
    load_runs,
    newest_per_spec,
    pick_campaign,
)
from harness.report.curves import fig6_panels
from harness.report.index import write_index
from harness.report.labels import campaign_label
from harness.report.looks import LOOKS
from harness.report.pages import ablations, is_cifar10, ladder, table6, tuned
from harness.report.readme import update_readme
from harness.report.stats import paper_figure
from harness.report.summary import write_summary
from harness.report.tuning import committed_journals, write_tuning_pages
from harness.report.why import write_why_pages
from harness.tracking import figures as plots

PAGES = {g.name: list(g.pages) for g in REPORTED}

def report(out: Path = Path("reports"), budget: float | None = None, data_id: str | None = None,
           every: bool = False) -> int:
    """Write the pages of the campaign that `budget` and `data_id` name (default: that of the latest finished
    Table 6 run); with `every`, each campaign of the store into `out`/<data>-b<budget>/, the tuning studies' pages
    and figures, the index `out`/README.md and the campaign blocks of the README beside `out`."""
    if not every:
        write_reports(out, budget, data_id)
        return 0
    camps = campaigns(newest_per_spec(load_runs()))
    if camps.empty:
        pick_campaign(camps, None, None)  # the one-line error of an empty store
    stems = Counter(f"{Path(c.data_id.split(':')[0]).stem}-b{c.budget:g}" for c in camps.itertuples())
    for c in camps.itertuples():
        slug = f"{Path(c.data_id.split(':')[0]).stem}-b{c.budget:g}"
        if stems[slug] > 1:  # two files of one name: the hash tells them apart
            slug += "-" + c.data_id.split(":")[-1][:8]
        write_reports(out / slug, float(c.budget), str(c.data_id))
    write_why_pages(out)  # each why-campaign's page, of exactly its runs (it spans budgets)
    write_tuning_pages(out)  # from the Optuna storage: tune itself logs the figures on its MLflow run only
    for journal in committed_journals(out.parent):  # the studies a checkout commits (`make cpu-tune`)
        write_tuning_pages(out, f"journal:{journal}")
    print(f"report: wrote {write_index(out)}", file=sys.stderr)  # last: it lists the pages above
    readme = out.parent / "README.md"  # the checkout's README beside reports/: its campaign blocks quote the pages
    for folder in update_readme(readme, out):
        print(f"report: rewrote {readme}'s block from {out / folder}", file=sys.stderr)
    return 0


def figures(df: pd.DataFrame, tab: pd.DataFrame, bars, paper: dict, budget: float, official: bool, out: Path):
    """Error vs depth and the Fig. 6 curves of the Table 6 runs (where the campaign has any), the ladder's bars."""
    data = sorted(set(df.data))[0] if len(df) else ""
    label = "CIFAR-10 test error (%)" if official else f"error (%), {data.split(' ')[0]}, budget {budget:g}"
    if len(tab):  # a campaign without Table 6 runs (e.g. the ladder alone) gets no Table 6 figures
        measured = {LOOKS[arch].label: (LOOKS[arch].color, sub.depth, sub.measured_mean, sub.measured_std.fillna(0))
                    for arch in LOOKS if len(sub := tab[tab.arch == arch])}
        depths = sorted(int(k[6:]) for k in paper["test_error"] if int(k[6:]) <= 110)
        figs = [paper_figure(paper, f"resnet{d}") for d in depths]  # means where the paper gives them, as ours are
        plots.error_vs_depth(measured, (depths, [m for m, _, _ in figs], [s or 0 for _, s, _ in figs]), label,
                             out / "error_vs_depth.png")
        t6 = df[df.group == "table6"]
        plots.fig6_curves(fig6_panels(df), "test error (%)" if official else label, out / "curves_table6.png",
                          f"Fig. 6 (He et al. 2015) rerun on {campaign_label(list(t6.data), budget)}")
    if bars:
        plots.ladder_bars([n for n, _ in bars], [s.mean for _, s in bars],
                          [0 if math.isnan(s.std) else s.std for _, s in bars], label, out / "ladder.png")


def made_from(md: Path) -> str:
    """The budget, data and date in the header of a page written earlier: which runs that page is of."""
    fields = {}
    for line in md.read_text().splitlines()[:12]:
        key, _, value = line.removeprefix("- ").partition(": ")
        if line.startswith("- ") and key in ("Budget", "Data", "Date"):
            fields[key] = value.split(" (generated")[0]
    return f"budget {fields.get('Budget', '?')}, data {fields.get('Data', '?')}, written {fields.get('Date', '?')}"


def write_reports(out: Path = Path("reports"), budget: float | None = None, data_id: str | None = None) -> Path:
    df = newest_per_spec(load_runs())
    budget, data_id = pick_campaign(df, budget, data_id)
    df = df[(df.budget == budget) & (df.data_id == data_id)]
    official = is_cifar10(df[df.group == "table6"])  # from what the runs trained on, not their tags alone
    paper = load_paper()
    out.mkdir(parents=True, exist_ok=True)
    desc = descriptions(df)
    tab, bars, written = pd.DataFrame(), [], []
    if (df.group == "table6").any():
        tab = table6(df, paper, budget, official, out)
        written += PAGES["table6"]
    if (df.group == "ablations").any():  # a campaign without such runs (e.g. a GPU session's) gets no empty page
        ablations(df, paper, budget, official, out, desc)
        written += PAGES["ablations"]
    if (df.group == "ladder").any():
        bars = ladder(df, paper, budget, official, out, desc)
        written += PAGES["ladder"]
    if tuned(df, paper, budget, official, out, desc):
        written += PAGES["tuned"]
    figures(df, tab, bars, paper, budget, official, out)
    written.insert(0, write_summary(df, paper, budget, official, out, desc).name)
    print(f"report: wrote {out}/{', '.join(written)} ({len(df)} runs, budget {budget:g}, {data_id})",
          file=sys.stderr)
    say_what_was_left(out, written, budget, data_id)
    return out


def say_what_was_left(out: Path, written: list[str], budget: float, data_id: str) -> None:
    """The folder now holds pages of two sets of runs: each page this campaign had no runs for is named, with the
    campaign it is of."""
    for group, files in PAGES.items():
        left = [out / f for f in files if f not in written and (out / f).exists()]
        if left:
            print(f"report: left {', '.join(map(str, left))} as {'they were' if len(left) > 1 else 'it was'} "
                  f"(no {group} runs for budget {budget:g} on {data_id}; {left[0].name} is from an earlier report: "
                  f"{made_from(left[0])})", file=sys.stderr)
