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
from pathlib import Path

import pandas as pd
import yaml

from harness.core.campaign_file import Campaign, WhyPlan, campaign_runs, load_campaign
from harness.core.data_tag import DataTag
from harness.core.groups import CHECKOUT, load_paper
from harness.report.campaign import load_runs, newest_per_spec
from harness.report.labels import budget_words
from harness.report.pages import device_lines, finished_on, on_official_test
from harness.report.why_text import (
    AUGMENT_WORDS,
    Role,
    answer,
    delta,
    epochs_words,
    role,
    section_a,
    section_b,
    section_c,
    train_images,
)
from harness.tracking import figures as plots
from harness.tracking import store as tracking

CAMPAIGNS = Path("experiments/campaigns")


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


def load_log(root: Path, plan: WhyPlan) -> dict:
    return yaml.safe_load((root / plan.log).read_text())


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
        *device_lines(finished),
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
                     (f"cost vs {plan.baseline} ({base.s.mean:.2f} %)" if base.s.n else "cost (no baseline yet)")
                     + (f"; runs of {machines} machines" if (machines := finished.device.nunique()) > 1 else ""), path)
