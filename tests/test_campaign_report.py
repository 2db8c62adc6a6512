"""A campaign's pages and README's quote of them, from real committed records (results/, mini data)."""

import re
import shutil

import pandas as pd
import pytest

from harness.cli import main
from harness.report.curves import mean_curve
from harness.report.labels import budget_words, campaign_label, row_label
from harness.report.summary import depth_effects

from .helpers import ROOT

FULL = "cifar10-full.npz train=50000 val=0 test=10000 (official test set)"
SPLIT = "cifar10-full.npz train=45000 val=5000 test=10000 (official test set)"


def test_a_campaign_is_named_by_its_data_and_budget():
    assert budget_words(0.03125) == "1/32" and budget_words(0.0005) == "1/2000" and budget_words(0.3) == "0.3"
    assert campaign_label([FULL, FULL, SPLIT], 0.03125) == (  # a title covers every row under it
        "CIFAR-10, official test set: all 50k training images (2 runs) and 45k/5k split of the 50k training images "
        "(1 run); budget 1/32 (2,000 iterations) — not the paper's budget")
    assert campaign_label([FULL], 1.0) == "CIFAR-10, all 50k training images, official test set, budget 1 (the " \
                                          "paper's budget)"
    assert row_label(FULL, [FULL, SPLIT], 0.03125) == "all 50k training images, budget 1/32"
    assert row_label(SPLIT, [FULL, SPLIT], 0.03125) == "**45k/5k split of the 50k training images, budget 1/32**"
    mini = "cifar10-mini.npz train=4068 val=0 test=1017"
    assert campaign_label([mini], 0.0005).startswith("cifar10-mini.npz, 4068 training images, 1017 held-out images "
                                                     "as test set (not the official test set), budget 1/2000 (32 ")


def test_a_curve_is_the_mean_of_its_seeds_at_the_steps_all_of_them_have():
    c = mean_curve("x", [[(1, 10.0), (2, 20.0)], [(1, 30.0), (2, 40.0), (3, 1.0)]],
                   [[(1, 50.0), (2, 60.0)], [(1, 70.0), (2, 80.0)]])
    assert c.train == [(1, 20.0), (2, 30.0)] and c.test == [(1, 60.0), (2, 70.0)]
    assert [round(s, 6) for s in c.test_std] == [14.142136, 14.142136]
    one = mean_curve("y", [[(1, 10.0)]], [[(1, 50.0)]])
    assert one.test == [(1, 50.0)] and one.test_std == ()


@pytest.mark.slow
def test_make_report_rewrites_the_campaign_block_of_the_readme(tmp_path, monkeypatch, capsys):
    """The committed mini records (ResNet-20 seed 0, plain-20 seeds 0 and 1, budget 0.0005) through `results
    import` and `report --all`, as `make report` does: the summary page and README's block quote them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/store/mlflow.db")
    shutil.copytree(ROOT / "results", tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- campaign:begin cifar10-mini-b0.0005 -->\ntyped 1.23\n<!-- campaign:end -->\n\n"
                      "<!-- campaign:begin cifar10-nope-b1 -->\nkept\n<!-- campaign:end -->\nend\n")
    assert main(["results", "import", "results"]) == 0
    assert main(["report", "--all"]) == 0
    err = capsys.readouterr().err
    assert "report: rewrote README.md's block from reports/cifar10-mini-b0.0005" in err
    assert "left README.md's campaign block cifar10-nope-b1 as it was" in err
    text = readme.read_text()
    assert "typed 1.23" not in text and "\nkept\n" in text and text.endswith("end\n")
    row = ("| table6/resnet20 | 0 | 86.63 (n=1) | 8.75 | cifar10-mini.npz, 4068 training images, budget 1/2000 | "
           "12.5 min, 5 img/s on AMD EPYC x2 threads |")  # each time with the machine its record names
    assert row in text, text  # 750 s for 32 iterations of 128 images: the record's train_seconds
    assert "Training time of these 3 runs: " in text
    assert re.search(r"\| table6/plain20 \| 0, 1 \| 76.99 ± 5.56 \(n=2\) \| — \(curves only in Fig. 6\) \| ", text)
    assert "- plain-20" not in text  # one depth per architecture: no depth effect to state
    summary = (tmp_path / "reports/cifar10-mini-b0.0005/summary.md").read_text()
    assert summary.startswith("# cifar10-mini.npz, 4068 training images, 1017 held-out images as test set (not the "
                              "official test set), budget 1/2000 (32 iterations) — not the paper's budget\n")
    assert "![Fig. 6 curves](curves_table6.png)" in summary
    index = (tmp_path / "reports/README.md").read_text()
    assert "[summary.md](cifar10-mini-b0.0005/summary.md)" in index
    assert (tmp_path / "reports/cifar10-mini-b0.0005/curves_table6.png").stat().st_size > 0
    before = text
    assert main(["report", "--all"]) == 0  # a second report: the same block, byte for byte
    assert readme.read_text() == before


def test_depth_effects_judge_the_deepest_against_the_shallowest_and_list_the_depths_between():
    rows = [("resnet", 20, 28.2), ("resnet", 20, 28.9), ("resnet", 20, 27.6), ("resnet", 32, 38.0),
            ("resnet", 56, 41.4), ("plain", 20, 27.5), ("plain", 56, 68.5)]
    df = pd.DataFrame([{"group": "table6", "status": "FINISHED", "arch": a, "depth": d, "test_error": e}
                       for a, d, e in rows] + [{"group": "table6", "status": "FAILED", "arch": "plain", "depth": 32,
                                                "test_error": 90.0}])  # a failed run is no depth
    assert depth_effects(df) == [
        "- plain-20 → plain-56: 27.50 → 68.50 (+41.00 points; noise unknown: n=1 in plain-56, n=1 in plain-20)",
        "- ResNet-20 → ResNet-56: 28.23 → 41.40 (+13.17 points; outside seed noise (p=0.00), taking ResNet-20's seed "
        "spread for ResNet-56 (n=1)); depth 20, 32, 56: 28.23, 38.00, 41.40"]
