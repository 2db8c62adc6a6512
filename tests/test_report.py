"""`harness table` + `harness report` on a store filled by real short runs on mini CIFAR-10."""

import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from harness.cli import main
from harness.core.groups import load_paper
from harness.report import pages
from harness.report.campaign import split_of
from harness.report.pages import paper_cell
from harness.report.stats import noise_verdict, paper_figure
from harness.tracking.experiments import group_experiments

from .helpers import ROOT, TINY


def test_paper_figures_file_matches_he_et_al_table6():
    paper = yaml.safe_load((ROOT / "experiments/paper.yaml").read_text())
    assert paper["test_error"] == {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97,
                                   "resnet110": 6.43, "resnet1202": 7.93}
    assert paper["resnet110_mean_std"] == [6.61, 0.16]


def test_paper_figures_are_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ here: the checkout's copy is read
    assert load_paper()["test_error"]["resnet32"] == 7.51


def test_table_runs_everything_survives_a_failure_and_reports_from_mlflow(store, mini_quarter, capsys, write_spec):
    exp = store.parent / "experiments"
    exp.mkdir(parents=True)
    shutil.copy(ROOT / "experiments/paper.yaml", exp / "paper.yaml")
    write_spec(exp / "table6", "resnet32", TINY.replace("seeds: [0]", "seeds: [0, 1]"))
    write_spec(exp / "table6", "plain8", TINY.replace("arch: resnet", "arch: plain"))
    write_spec(exp / "table6", "resnet1202", "heavy: true\n" + TINY)  # heavy: skipped by default
    write_spec(exp / "ablations", "a_diverges", TINY.replace("lr: 0.1", "lr: 1.0e+30"))
    write_spec(exp / "ablations", "baseline", TINY)  # the ablations' own: their split, everything else equal
    write_spec(exp / "ablations", "fc_relu", "description: ReLU after the fc layer\n"
               + TINY.replace("depth: 8}", "depth: 8, fc_relu: true}"))
    write_spec(exp / "ablations", "bad_spec", TINY.replace("depth: 8", "depth: 9"))  # skipped, reported
    write_spec(exp / "ladder", "0_seed", TINY.replace("name: sgd", "name: adam").replace("lr: 0.1", "lr: 0.001"))

    (store.parent / "reports" / "bench").mkdir(parents=True)  # a real H100 bench line, rendered by report
    shutil.copy(ROOT / "reports/bench/h100-2026-11-23.jsonl", store.parent / "reports" / "bench")
    code = main(["table", "--data", str(mini_quarter), "--no-progress", "--publish"])
    err = capsys.readouterr().err
    assert code == 2  # an invalid spec (and a diverged run): not everything finished
    assert "bad_spec.yaml: model.depth: expected 6n+2" in err
    assert "plan: 7 runs in total, 0 already done, 7 to do; ETA" in err
    assert re.search(r"table: 7 runs: 1 diverged, 6 finished in \d+s; 1 invalid spec\(s\) skipped, see the error "
                     r"lines above", err), err[-3000:]
    assert re.search(r"\[2/7\] \S+  \(\d+s elapsed, ~\d+(s| min| h) left at the rate so far\)", err), err[-3000:]
    c = MlflowClient()
    statuses = {}
    for g in ("table6", "ablations", "ladder"):
        for r in c.search_runs(group_experiments(c, g)):
            statuses[r.info.run_name] = r.info.status
    assert statuses == {"resnet32-s0": "FINISHED", "resnet32-s1": "FINISHED", "plain8-s0": "FINISHED",
                        "a_diverges-s0": "FAILED", "fc_relu-s0": "FINISHED", "0_seed-s0": "FINISHED",
                        "baseline-s0": "FINISHED"}

    assert (store.parent / "results" / "table6").is_dir()  # `table --publish` exported its finished runs
    assert "cifar10-mini-quarter-b1/" in (store.parent / "reports" / "README.md").read_text()
    out = store.parent / "reports" / "cifar10-mini-quarter-b1"  # `table` reports every campaign, each in its folder
    assert "| ours_graphed | 37,327.0 | 3.43 |" in (out.parent / "bench.md").read_text()  # resnet20's row in that file
    for f in ("table6.md", "table6.csv", "ablations.md", "ladder.md", "error_vs_depth.png", "curves_table6.png",
              "ladder.png"):
        assert (out / f).stat().st_size > 0, f
    t6 = (out / "table6.md").read_text()
    assert "NOT CIFAR-10 test error" in t6 and "Data: cifar10-mini-quarter.npz (train/val split: 922/102;" in t6
    assert "Budget: 1" in t6 and "| ResNet-8 | 0.08 | 922/102 | " in t6
    assert "not comparable" in t6 and "Device: cpu" in t6
    csv = pd.read_csv(out / "table6.csv")
    res = csv[csv.model == "ResNet-8"].iloc[0]
    errs = [r.data.metrics["test_error"] for r in c.search_runs(group_experiments(c, "table6"),
                                                                 "tags.spec_name = 'resnet32'")]
    assert res.n == 2 and abs(res.measured_mean - sum(errs) / 2) < 0.01
    assert pd.isna(res.delta_vs_paper)  # a subset at any budget is never compared with the paper
    assert res.best_over_training_if_selected_on_test <= res.measured_mean + 1e-9
    ab = (out / "ablations.md").read_text()
    assert "| a_diverges |" in ab and "diverged" in ab and "| fc_relu | ReLU after the fc layer |" in ab
    assert "noise unknown: n=1 in this row" in ab
    assert "Baseline: ablations/baseline (experiments/ablations/baseline.yaml: ResNet-32 on the paper's recipe and " \
        "the ablations' 45k/5k split; 922/102), " in ab and "| baseline |" not in ab  # the ablations' split
    lad = (out / "ladder.md").read_text()
    assert "| 0_seed |" in lad and "| paper_resnet32 |" in lad
    summary = (out / "summary.md").read_text()  # the ablations' effects, the diverged one in its table row only
    assert "against the ablations' baseline (ablations/baseline, trained on 922/102):\n- fc_relu — ReLU after the " \
        "fc layer: " in summary, summary
    assert re.search(r"- fc_relu — ReLU after the fc layer: (\d+\.\d\d) vs (\d+\.\d\d) \([+-]\d+\.\d\d points; "
                     r"noise unknown: n=1 in fc_relu, n=1 in the baseline\)\n<!-- summary:end -->", summary), summary
    assert "- a_diverges" not in summary

    # Rerun: the plan sees everything done (the diverged run is not retried) and trains nothing.
    (exp / "ablations" / "bad_spec.yaml").unlink()
    assert main(["table", "--data", str(mini_quarter), "--no-progress", "--no-report"]) == 0
    assert "7 already done, 0 to do" in capsys.readouterr().err

    # A budget with no runs is one line and exit 2, as is a store that is not there (and reading creates none).
    assert main(["report", "--budget", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "no finished runs for --budget 0.5; the store has: budget 1 on cifar10-mini-quarter.npz:" in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    missing = store.parent / "elsewhere" / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{missing}"  # the store fixture's monkeypatch restores it
    assert main(["report", "--out", str(store.parent / "r2")]) == 2
    assert f"{missing}: no MLflow store there" in capsys.readouterr().err
    assert not missing.parent.exists() and not (store.parent / "r2").exists()


def test_report_on_a_store_without_runs_is_one_line(store, capsys):
    from harness.tracking import store as tracking

    tracking.client().search_experiments()  # the store exists, with no experiment of ours in it
    for args in ([], ["--budget", "0.5"], ["--budget", "0.5", "--data-id", "x"]):
        assert main(["report", *args]) == 2, args
        err = capsys.readouterr().err
        assert "no finished runs in its experiments table6, ablations, ladder, tuned" in err and "Traceback" not in err


def test_report_help_documents_the_data_id_format(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "name + ':' + the first 16 hex digits of the file's SHA-256" in out


def test_paper_column_sets_resnet110s_mean_beside_our_mean():
    paper = load_paper()  # Table 6's 6.43 for ResNet-110 is the best of 5 runs; their mean is 6.61 ± 0.16
    assert paper_figure(paper, "resnet110") == (6.61, 0.16, 6.43)
    assert paper_cell(*paper_figure(paper, "resnet110")) == "6.61 ± 0.16 (best 6.43)"
    assert paper_cell(*paper_figure(paper, "resnet32")) == "7.51"


def test_a_single_seed_is_judged_against_the_seed_spread_of_the_other_side():
    # Three seeds of a shallow net (std 0.65) and one of a deep one: Student's pooled t-test, 2 degrees of freedom.
    shallow, deep = np.array([28.2, 28.9, 27.6]), np.array([41.4])
    t = (41.4 - shallow.mean()) / (shallow.std(ddof=1) * np.sqrt(1 + 1 / 3))  # 17.5 by hand
    assert 17 < t < 18  # p = 2 * t.sf(17.5, 2) = 0.003
    assert noise_verdict(deep, shallow, ("ResNet-56", "ResNet-20")) == \
        "outside seed noise (p=0.00), taking ResNet-20's seed spread for ResNet-56 (n=1)"
    assert noise_verdict(shallow, np.array([28.5]), ("ResNet-20", "ResNet-32")) == \
        "within seed noise (p=0.76), taking ResNet-20's seed spread for ResNet-32 (n=1)"  # t = 0.35
    assert noise_verdict(np.array([28.5]), np.array([41.4])) == "noise unknown: n=1 in this row, n=1 in the baseline"
    assert noise_verdict(shallow, shallow + 2) == "outside seed noise (p=0.02)"  # Welch where both have seeds


def test_report_says_which_runs_it_is_of_and_what_it_left(store, mini_quarter, capsys, write_spec):
    """One store of real tiny runs (ResNet-8, 12 iterations at budget 1, 6 at 0.5): campaign A (budget 1) has
    table6 and ladder runs, campaign B (budget 0.5) only a table6 run, campaign C the same file name with other
    bytes. Each report must say which runs it is of, and what in its folder it did not rewrite."""
    exp = store.parent / "experiments"
    exp.mkdir(parents=True)
    paper = yaml.safe_load((ROOT / "experiments/paper.yaml").read_text())
    paper["test_error"]["resnet8"] = 9.0  # a best-of-runs figure with its mean ± std beside it, as ResNet-110's
    paper["resnet8_mean_std"] = [9.5, 0.25]
    (exp / "paper.yaml").write_text(yaml.safe_dump(paper))
    write_spec(exp / "table6", "resnet32", TINY.replace("seeds: [0]", "seeds: [0, 1]"))
    write_spec(exp / "table6", "resnet8_diverges", TINY.replace("lr: 0.1", "lr: 1.0e+30"))  # same row, fails
    write_spec(exp / "ladder", "3_multistep", TINY.replace("lr: 0.1", "lr: 0.05"))  # not table6's recipe: it closes
    assert main(["run", str(exp / "table6"), str(exp / "ladder"), "--data", str(mini_quarter), "--no-progress"]) == 1
    assert main(["run", str(exp / "ladder"), "--data", str(mini_quarter), "--no-progress", "--force"]) == 0  # again
    c = MlflowClient()
    done = c.search_runs(group_experiments(c, "table6"), "tags.spec_name = 'resnet32'")[0]
    mini_id = done.data.tags["data_id"]
    assert re.fullmatch(r"cifar10-mini-quarter\.npz:[0-9a-f]{16}", mini_id), mini_id
    # a seed still training when the report is made
    in_flight = c.create_run(done.info.experiment_id, run_name="resnet32-s2", tags={
        **{k: v for k, v in done.data.tags.items() if not k.startswith("mlflow.")}, "spec_hash": "in-flight"})
    for k in ("model.arch", "model.depth"):
        c.log_param(in_flight.info.run_id, k, done.data.params[k])
    c.log_param(in_flight.info.run_id, "seed", "2")

    out = store.parent / "r"
    assert main(["report", "--out", str(out)]) == 0
    capsys.readouterr()
    t6md = (out / "table6.md").read_text()
    assert t6md.startswith("# Table 6 (He et al. 2015) rerun at budget 1 on cifar10-mini-quarter.npz: not CIFAR-10 "
                           "test error\n"), t6md[:200]
    assert "| best seed (final error) |" in t6md
    assert re.search(r"\| ResNet-8 \| 0.08 \| 922/102 \| 9.50 ± 0.25 \(best 9.00\) \| ", t6md), t6md
    assert "(n=2; 1 failed: diverged; 1 unfinished) |" in t6md
    assert "ResNet-8: the paper's Table 6 figure 9.00 is the best of its runs" in t6md
    row = pd.read_csv(out / "table6.csv").iloc[0]
    assert (row.paper_test_error, row.paper_std, row.paper_best_run, row.n) == (9.5, 0.25, 9.0, 2)
    assert row.best_seed <= row.measured_mean
    lad = (out / "ladder.md").read_text()
    assert re.search(r"\| 3_multistep \|  \| 922/102 \| \d+\.\d\d \(n=1\) \|", lad), lad  # a rerun replaces its run
    assert re.search(r"\| paper_resnet32 \| .* \| (within|outside) seed noise \(p=\d\.\d\d\), taking this rung's seed "
                     r"spread for the previous rung \(n=1\) \|", lad), lad  # two seeds against one
    assert "the ladder runs backwards" not in lad  # that reading is of a short run, and this is budget 1
    ladder_before = (out / "ladder.md").read_bytes()

    # Campaign B has no ladder runs: ladder.md and ladder.png stay, and report says so and of which runs they are.
    assert main(["run", str(exp / "table6" / "resnet32.yaml"), "--set", "seeds=[0]", "--budget", "0.5",
                 "--data", str(mini_quarter), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert (f"report: left {out}/ladder.md, {out}/ladder.png as they were (no ladder runs for budget 0.5 on "
            f"{mini_id}; ladder.md is from an earlier report: budget 1, data cifar10-mini-quarter.npz (train/val "
            "split: 922/102") in err, err
    assert "ablations.md" not in err and "tuned.md" not in err  # never written here: nothing to say
    assert (out / "ladder.md").read_bytes() == ladder_before
    assert "- Budget: 0.5\n" in (out / "table6.md").read_text()

    # Campaign C: another file of the same name. --data-id by file name works where it names one data id.
    other = store.parent / "other" / "cifar10-mini-quarter.npz"
    other.parent.mkdir()
    with np.load(mini_quarter) as z:
        np.savez(other, x_train=z["x_train"][:400], y_train=z["y_train"][:400], x_test=z["x_test"][:100],
                 y_test=z["y_test"][:100])
    assert main(["run", str(exp / "table6" / "resnet32.yaml"), "--set", "seeds=[0]", "--budget", "0.5",
                 "--data", str(other), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", "--budget", "1", "--data-id", "cifar10-full.npz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "no finished runs for --budget 1 --data-id cifar10-full.npz; the store " \
        "has: budget 0.5 on cifar10-mini-quarter.npz:" in err, err  # the newest campaign first
    assert f"budget 0.5 on {mini_id} (1 finished run)" in err, err
    assert f"budget 1 on {mini_id} (3 finished runs)" in err, err  # resnet32 s0, s1 and 3_multistep once
    assert main(["report", "--data-id", "cifar10-mini-quarter.npz"]) == 2  # two files have that name
    assert "--data-id cifar10-mini-quarter.npz: names 2 data ids" in capsys.readouterr().err
    assert main(["report", "--out", str(store.parent / "r1"), "--budget", "1", "--data-id",
                 "cifar10-mini-quarter.npz"]) == 0
    assert f"budget 1, {mini_id})" in capsys.readouterr().err
    assert "- Budget: 1\n" in (store.parent / "r1" / "table6.md").read_text()

    # Campaign D has ladder runs only (e.g. `table experiments/ladder`): a ladder page, Table 6 left as it was.
    assert main(["run", str(exp / "ladder"), "--budget", "0.75", "--data", str(mini_quarter), "--no-progress"]) == 0
    table6_before = (out / "table6.md").read_bytes()
    capsys.readouterr()
    assert main(["report", "--out", str(out), "--budget", "0.75", "--data-id", mini_id]) == 0  # as `table` asks
    err = capsys.readouterr().err
    assert f"report: left {out}/table6.md, {out}/table6.csv, " in err and "(no table6 runs for budget 0.75" in err, err
    assert (out / "table6.md").read_bytes() == table6_before and "- Budget: 0.75\n" in (out / "ladder.md").read_text()


def _runs(rows: list[tuple[str, str, str, float]], tuned_source: str = "") -> pd.DataFrame:
    """Finished runs as the report reads them from MLflow: (group, spec, data tag, test error), budget 1.0; the
    tuned ones name `tuned_source` as the spec their study tuned."""
    return pd.DataFrame([{"group": g, "spec": n, "data": d, "split": split_of(d), "test_error": e, "budget": 1.0,
                          "status": "FINISHED", "failure": "", "best_test_error_over_training": e, "device": "cuda",
                          "spec_hash": f"{g}{n}{e}", "arch": "resnet", "depth": 32,
                          "tuned_source": tuned_source if g == "tuned" else ""} for g, n, d, e in rows])


FULL_45K = "cifar10-full.npz train=45000 val=5000 test=10000 (official test set)"
FULL_50K = "cifar10-full.npz train=50000 val=0 test=10000 (official test set)"


def test_pages_compare_with_the_baseline_of_their_split_and_label_what_runs_trained_on(tmp_path, capsys):
    """Records made when the file alone decided the label (official_test_set true for a 45k run) are labelled by
    what they trained on: the ablations' page is test error on the official test set after 45,000 images, and
    its deltas are against ablations/baseline (45k/5k), not table6/resnet32 (50k)."""
    paper = load_paper()
    df = _runs([("table6", "resnet32", FULL_50K, 7.0), ("table6", "resnet32", FULL_50K, 7.2),
                ("ablations", "baseline", FULL_45K, 8.0), ("ablations", "baseline", FULL_45K, 8.2),
                ("ablations", "fc_relu", FULL_45K, 9.0), ("ablations", "fc_relu", FULL_45K, 9.2),
                ("tuned", "resnet32", FULL_45K, 7.5)])
    df["official"] = "true"
    pages.ablations(df, paper, 1.0, True, tmp_path, {})
    ab = (tmp_path / "ablations.md").read_text()
    assert "- Measured: CIFAR-10 test error" not in ab and "not CIFAR-10 test error)" in ab.splitlines()[0], ab
    assert "- Measured: test error (%) on the official CIFAR-10 test set after training on 45,000 images" in ab
    assert "Baseline: ablations/baseline (" in ab and "45k/5k), 8.10 ± 0.14 (n=2)" in ab
    assert "| fc_relu |  | 45k/5k | 9.10 ± 0.14 (n=2) | +1.00 |" in ab, ab
    pages.tuned(df, paper, 1.0, True, tmp_path, {})
    tu = (tmp_path / "tuned.md").read_text()
    assert "- resnet32: paper schedule: ablations/baseline (" in tu, tu  # names no source: its split's baseline
    assert "| 7.50 (n=1) | ablations/baseline | 8.10 ± 0.14 (n=2) | -0.60 |" in tu, tu
    pages.table6(df, paper, 1.0, True, tmp_path)
    assert (tmp_path / "table6.md").read_text().startswith("# Table 6 (He et al. 2015) reproduced: CIFAR-10 test "
                                                           "error")
    assert pages.is_cifar10(df[df.group == "table6"]) and not pages.is_cifar10(df[df.group == "ablations"])

    capsys.readouterr()
    pages.ablations(df[df.spec != "baseline"], paper, 1.0, True, tmp_path, {})
    ab = (tmp_path / "ablations.md").read_text()
    assert ("Baseline: none: no baseline trained on this page's split (45k/5k) in this campaign: looked for "
            "ablations/baseline (experiments/ablations/baseline.yaml)") in ab, ab
    assert "| fc_relu |  | 45k/5k | 9.10 ± 0.14 (n=2) | — | — (no baseline) |" in ab, ab
    assert "report: ablations.md: no baseline trained on this page's split (45k/5k) in this campaign: looked for " \
        "ablations/baseline (experiments/ablations/baseline.yaml)" in capsys.readouterr().err


def test_a_tuned_spec_meets_the_spec_its_study_tuned_not_the_resnet32_baseline(tmp_path):
    """A schedule tuned on ResNet-20 (tuned.source experiments/tuning/cpu-resnet20.yaml) is set against that spec
    trained as it is, at the paper's schedule, on the same budget and split, even where the ablations' ResNet-32
    baseline is in the same campaign; with no run of its twin, the page says which spec it looked for."""
    paper = load_paper()
    rows = [("ablations", "baseline", FULL_45K, 8.0), ("tuning", "cpu-resnet20", FULL_45K, 9.0),
            ("tuning", "cpu-resnet20", FULL_45K, 9.4), ("tuned", "cpu-resnet20", FULL_45K, 8.5),
            ("tuned", "cpu-resnet20", FULL_45K, 8.7)]
    df = _runs(rows, tuned_source="experiments/tuning/cpu-resnet20.yaml")
    assert pages.tuned(df, paper, 1.0, True, tmp_path, {})
    tu = (tmp_path / "tuned.md").read_text()
    assert "- cpu-resnet20: paper schedule: tuning/cpu-resnet20 (experiments/tuning/cpu-resnet20.yaml: the spec " \
        "its study tuned" in tu, tu
    assert "| 8.60 ± 0.14 (n=2) | tuning/cpu-resnet20 | 9.20 ± 0.28 (n=2) | -0.60 |" in tu, tu
    pages.tuned(df[df.group != "tuning"], paper, 1.0, True, tmp_path, {})
    tu = (tmp_path / "tuned.md").read_text()
    assert "looked for tuning/cpu-resnet20 (experiments/tuning/cpu-resnet20.yaml)" in tu, tu
    assert "| tuning/cpu-resnet20 | — | — | — (no baseline) |" in tu, tu


FULL = "cifar10-full.npz train=50000 val=0 test=10000 (official test set)"
SPLIT = "cifar10-full.npz train=45000 val=5000 test=10000 (official test set)"


def test_a_title_names_every_split_of_the_rows_under_it():
    """A campaign of 12 runs on all 50k images and 2 on the 45k/5k split is titled with both, the most common first,
    and only the rows off the most common split are bold; the committed summary and README's block say so."""
    from harness.report.labels import campaign_label, row_label

    tags = [FULL] * 12 + [SPLIT] * 2
    assert campaign_label(tags, 0.03125) == (
        "CIFAR-10, official test set: all 50k training images (12 runs) and 45k/5k split of the 50k training images "
        "(2 runs); budget 1/32 (2,000 iterations) — not the paper's budget")
    assert campaign_label([FULL] * 3, 1.0) == "CIFAR-10, all 50k training images, official test set, budget 1 (the " \
                                              "paper's budget)"
    assert row_label(SPLIT, tags, 0.03125).startswith("**") and not row_label(FULL, tags, 0.03125).startswith("**")
    page = (ROOT / "reports/cifar10-full-b0.03125/summary.md").read_text()
    assert page.startswith("# CIFAR-10, official test set: all 50k training images (12 runs) and 45k/5k split")
    assert "**CIFAR-10, official test set: all 50k training images (12 runs) and 45k/5k split" in \
        (ROOT / "README.md").read_text()


def test_times_are_per_machine_and_each_time_agrees_with_its_rate():
    """A mean time beside a mean rate over runs of two machines cannot both hold (38.7 min at 409 img/s is not a
    256k-image run): each machine gets its own figure, its rate the images over the seconds of its runs."""
    from harness.report.summary import Timing, _speed

    xeon = "cpu:x86_64 Intel Xeon x2 threads"
    runs = [Timing(6108, 256000, "cpu:x86_64 AMD EPYC x2 threads"), Timing(438, 256000, xeon),
            Timing(430, 256000, xeon)]
    said = _speed(runs)
    assert said == ("101.8 min, 42 img/s on AMD EPYC x2 threads (n=1); 7.2 min, 590 img/s on Intel Xeon x2 threads "
                    "(n=2)")
    for minutes, rate in re.findall(r"([\d.]+) min, (\d+) img/s", said):
        assert abs(float(minutes) * 60 * int(rate) - 256000) / 256000 < 0.01
    assert _speed(runs[1:2]) == "7.3 min, 584 img/s on Intel Xeon x2 threads"


def test_a_noise_verdict_says_when_the_spread_it_used_mixes_machines_or_commits():
    """The spread of seeds trained on two machines at two commits measures those too: the verdict says so for the
    side whose spread it used, and the committed summary marks ResNet-20's; a seed of a commit outside this
    repository's history is marked and named."""
    from harness.report.stats import provenance, verdict

    def runs(errors, devices, commits):
        return pd.DataFrame({"status": "FINISHED", "test_error": errors, "device": devices, "commit": commits,
                             "best_test_error_over_training": errors, "failure": ""})

    mixed = runs([28.2, 23.3, 23.9], ["amd", "xeon", "xeon"], ["8315f88c215f", "d954141b5e3b", "d954141b5e3b"])
    one = runs([41.4], ["xeon"], ["b783b4060946"])
    assert provenance(mixed) == "seeds of mixed provenance: 2 machines and 2 commits"
    assert provenance(runs([1.0, 2.0], ["x", "x"], ["a", "a-dirty"])) == ""
    said = verdict(one, mixed, ("ResNet-56", "ResNet-20"))
    assert said.endswith("taking ResNet-20's seed spread for ResNet-56 (n=1); ResNet-20's seeds of mixed provenance: "
                         "2 machines and 2 commits"), said
    page = (ROOT / "reports/cifar10-full-b0.03125/summary.md").read_text()
    assert "ResNet-20's seeds of mixed provenance: 2 machines and 2 commits" in page
    if (ROOT / ".git").exists() and os.popen(f"git -C {ROOT} rev-parse --is-shallow-repository").read().strip() == \
            "false":
        assert "| table6/plain20 | 0†, 1, 2 |" in page and "table6/plain20 seed 0 (ace4ed7dd265)" in page


def test_a_page_of_runs_of_two_machines_counts_each_and_says_what_a_delta_across_them_measures():
    """One machine: the device line alone. Two: each machine with its count of runs, and a line saying that a Δ
    between rows of different machines measures the machines too; the committed 1/32 summary (runs of an AMD EPYC
    and an Intel Xeon) says so, and the reports index still quotes its device line."""
    from harness.report.pages import device_lines

    amd, xeon = "cpu:x86_64 AMD EPYC x1 threads", "cpu:x86_64 Intel Xeon x2 threads"
    assert device_lines(pd.DataFrame({"device": [amd, amd]})) == [f"- Device: {amd}"]
    two = device_lines(pd.DataFrame({"device": [xeon, amd, amd]}))
    assert two[0] == f"- Device: {amd} (2 runs), {xeon} (1 run)"
    assert two[1].startswith("- Machines: 2 (a CPU or GPU and its thread count each): a Δ between rows of different "
                             "machines also measures the machines")
    page = (ROOT / "reports/cifar10-full-b0.03125/summary.md").read_text().splitlines()
    devices = next(line for line in page if line.startswith("- Device: "))
    assert re.search(r"\(\d+ runs?\), ", devices), devices
    assert page[page.index(devices) + 1].startswith("- Machines: 3 "), page[:12]
    index = (ROOT / "reports/README.md").read_text()
    assert f"device {devices.removeprefix('- Device: ')}," in index
