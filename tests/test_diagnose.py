"""`diagnose`: a user's departures from the paper's recipe, each with the cost the committed records measure for that
very change, a campaign for the rest, and the seed log's setup read as the why page reads it."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.core import factors as F
from harness.core.campaign_file import campaign_runs
from harness.core.spec import load_spec

from .helpers import ROOT, TINY


def _final(record: str) -> float:
    return json.loads((ROOT / record).read_text())["final"]["test_error"]


def _why_row(why: str, ref: str) -> str | None:
    return next((row for row in why.splitlines() if row.startswith("|") and f" {ref} |" in row), None)


def _figure(side: dict) -> str:
    return f"{side['test_error']:.2f}" + (f" ± {side['std']:.2f}" if side["n"] > 1 else "") + f" (n={side['n']}"


def test_the_seed_logs_setup_gets_the_records_costs_and_the_why_pages_figures(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)
    campaign = tmp_path / "adam.yaml"
    assert main(["diagnose", "experiments/seedlog/adam.yaml", "--json", "--campaign", str(campaign)]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["factor"]: r for r in out["factors"]}
    # the log's net, optimizer, schedule, batch, split, flip-only augmentation and length; float32 and the
    # per-pixel mean at test time are the paper's
    assert list(rows) == ["architecture", "optimizer", "schedule", "batch size", "split", "augmentation", "length"]
    for r in (r for r in rows.values() if r["measured"]):
        ours, paper = r["your_side"], r["paper_side"]
        # the cost is the records' own final test errors, mean against mean
        assert r["cost"] == pytest.approx(np.mean([_final(p) for p in ours["records"]])
                                          - np.mean([_final(p) for p in paper["records"]]), abs=0.006)
        before, after = (F.values_of(load_spec("experiments/table6/resnet32.yaml")),
                         F.values_of(load_spec("experiments/seedlog/adam.yaml")))
        assert before[r["factor"]] != after[r["factor"]]
    assert rows["architecture"]["measured"]  # the cpu-b1_32 campaign's torchvision_resnet34 against its baseline
    assert rows["architecture"]["your_side"]["run"] == "ablations/torchvision_resnet34"
    # The why page, made from the same records, prints the same figure for every run both name at its budget.
    why = (ROOT / "reports/cpu-why/why.md").read_text()
    budgets = {float(b) for b in re.search(r"^- Budget: (.*)$", why, re.M).group(1).split(", ")}
    sides = [s for r in rows.values() if r["measured"] for s in (r["your_side"], r["paper_side"])]
    combo = out["combination"]
    sides += [s for s in (combo["your_side"], combo["paper_side"]) if s]
    shown = [(s, row) for s in sides if s["budget"] in budgets and (row := _why_row(why, s["run"]))]
    assert any(s["run"] == "seedlog/adam" for s, _ in shown)  # the log's setup, taken together
    for s, row in shown:
        assert f"| {_figure(s)}" in row, (s, row)
    if combo["paper_side"] and combo["paper_side"]["budget"] in budgets:
        cost = f"| {combo['cost']:+.2f} |".replace("+-", "-")  # section b's row: a's table of the run has no Δ
        assert any(cost in row for row in why.splitlines() if f" {combo['your_side']['run']} |" in row), cost
    # The campaign measures exactly the unmeasured factors, each run one factor away from its baseline.
    unmeasured = [f for f, r in rows.items() if not r["measured"] or r["background"] > 0]
    assert out["campaign"]["path"] == str(campaign) and out["campaign"]["runs"] == len(campaign_runs(campaign))
    runs = campaign_runs(campaign)
    bases = {r.source_file: F.values_of(r.spec) for r in runs if r.name in ("baseline", "resnet32")}
    moved = {}
    for r in runs:
        if r.name not in ("baseline", "resnet32"):
            (factor,) = F.departures(bases[r.source_file], F.values_of(r.spec))
            moved[factor] = r
    assert sorted(moved) == sorted(unmeasured)
    assert F.values_of(moved["augmentation"].spec)["augmentation"] == (("augment", "flip"),)


def test_a_bad_spec_is_the_one_line_validate_prints(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)
    for args in (["experiments/table6/resnet32.yaml", "--set", "model.depth=33"], [str(tmp_path / "none.yaml")],
                 ["experiments/table6/resnet32.yaml", "--set", "optimizer.nme=adam"]):
        assert main(["validate", *args]) == 2
        said = capsys.readouterr().err
        assert main(["diagnose", *args, "--campaign", str(tmp_path / "c.yaml")]) == 2
        err = capsys.readouterr().err
        assert err == said and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not (tmp_path / "c.yaml").exists()


def test_the_papers_own_spec_departs_in_nothing(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["diagnose"]) == 0
    assert "It departs from the paper's recipe in no factor" in capsys.readouterr().out


@pytest.mark.slow
def test_a_generated_campaign_run_tiny_is_picked_up_by_the_next_diagnose(store, mini_quarter, write_spec, capsys):
    root = store.parent
    paper = write_spec(root / "experiments" / "table6", "paper", TINY.replace("val_fraction: 0.1", "val_fraction: 0"))
    base = write_spec(root / "experiments" / "ablations", "baseline")
    args = ["diagnose", "--set", "data.augment=flip", "--paper", str(paper.relative_to(root)), "--base",
            str(base.relative_to(root)), "--budget", "1", "--seeds", "0", "--campaign", "c.yaml", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert [(r["factor"], r["measured"]) for r in first["factors"]] == [("augmentation", False)]
    assert first["campaign"]["runs"] == 2 and first["campaign"]["runs_to_train"] == 2
    assert main(["table", "--campaign", "c.yaml", "--data", str(mini_quarter), "--no-progress", "--publish",
                 "--no-report"]) == 0
    capsys.readouterr()
    assert main(args) == 0
    (row,) = json.loads(capsys.readouterr().out)["factors"]
    assert row["measured"] and row["your_side"]["run"].startswith("ablations/augmentation_")
    assert row["paper_side"]["run"] == "ablations/baseline"
    records = {side: [json.loads(Path(p).read_text()) for p in row[side]["records"]]
               for side in ("your_side", "paper_side")}
    assert row["cost"] == pytest.approx(records["your_side"][0]["final"]["test_error"]
                                        - records["paper_side"][0]["final"]["test_error"], abs=0.006)
    assert "flip" in records["your_side"][0]["spec_yaml"] and row["noise"].startswith("noise unknown")
    assert main(args[:-1]) == 0
    text = capsys.readouterr().out
    assert "augmentation" in text and "not measured" not in text and "The campaign that measures" not in text
