"""The why page: a why-campaign's runs found by their hashes, set beside the log's printed figures, its answer
computed from them; runs not trained yet named, never filled in."""

import re

import pytest
import yaml

from harness.cli import main
from harness.core.campaign_file import load_campaign
from harness.errors import SpecError
from harness.report.readme import update_readme
from harness.report.why import why_campaigns, write_why_pages

from .helpers import ROOT, TINY

LOG = {"source": "a test's log", "runs": [
    {"spec": "seedlog/adam", "what": "the log's Adam run", "points": [
        {"epoch": 1, "test_accuracy": 40, "where": "first epoch"},
        {"epoch": 56, "train_accuracy": 98.93, "test_accuracy": 71.65, "where": "epoch 56"},
        {"epoch": 580, "train_accuracy": 100.0, "test_accuracy": 75.46, "where": "the end"}]},
    {"spec": "seedlog/sgd", "what": "the log's SGD run", "points": [
        {"epoch": 2740, "train_accuracy": 100.0, "test_accuracy": 68.60, "where": "the end"}]}]}
PLAN = {"log": "experiments/seed_log.yaml", "baseline": "ablations/baseline", "log_setup": "seedlog/adam",
        "augmentation": ["seedlog/adam_no_augment", "seedlog/adam"], "net": "ablations/wide",
        "recipe": "seedlog/adam_on_resnet8", "factors": ["ablations/no_lr_decay", "ablations/flip_only"]}


def why_campaign(root, runs, name="why-tiny", plan=PLAN):
    (root / "experiments" / "campaigns").mkdir(parents=True, exist_ok=True)
    (root / "experiments" / "seed_log.yaml").write_text(yaml.safe_dump(LOG))
    camp = root / "experiments" / "campaigns" / f"{name}.yaml"
    camp.write_text(yaml.safe_dump({"budget": 1.0, "overrides": ["eval_points=3"], "runs": runs,
                                    **({"why": plan} if plan else {})}))
    return camp


ADAM = TINY.replace("name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4", "name: adam, lr: 1.0e-3, "
                    "weight_decay: 0.0").replace("val_fraction: 0.1", "val_fraction: 0.05, augment: flip")
RUNS = [
    {"spec": "experiments/seedlog/adam.yaml", "seeds": [0], "name": "adam_no_augment", "set": ["data.augment=none"]},
    {"spec": "experiments/seedlog/adam.yaml", "seeds": [0, 1]},
    {"spec": "experiments/ablations/baseline.yaml", "seeds": [0, 1]},
    {"spec": "experiments/ablations/baseline.yaml", "seeds": [0], "name": "wide", "set": ["batch_size=64"]},
    {"spec": "experiments/seedlog/adam.yaml", "seeds": [0], "name": "adam_on_resnet8", "set": ["batch_size=16"]},
    {"spec": "experiments/ablations/baseline.yaml", "seeds": [0], "name": "no_lr_decay",
     "set": ["schedule.milestones=[]"]},
    {"spec": "experiments/ablations/baseline.yaml", "seeds": [0], "name": "flip_only", "set": ["data.augment=flip"]},
]


@pytest.mark.slow
def test_the_why_page_is_of_the_campaigns_runs_and_says_what_is_missing(store, mini_quarter, write_spec, capsys):
    root = store.parent
    write_spec(root / "experiments" / "seedlog", "adam", ADAM)
    write_spec(root / "experiments" / "ablations", "baseline")
    camp = why_campaign(root, RUNS)
    part = why_campaign(root, RUNS[:4], "part", None)  # slices a and b in part: no recipe run, no factors yet
    assert main(["table", "--campaign", str(part.relative_to(root)), "--data", str(mini_quarter), "--no-progress"]) == 0
    part.unlink()
    # a run of the same spec outside the campaign (another seed) is in the store, not on the page
    assert main(["run", "experiments/ablations/baseline.yaml", "--data", str(mini_quarter), "--set", "seeds=[7]",
                 "--set", "eval_points=3", "--no-progress"]) == 0
    out = root / "reports"
    assert write_why_pages(out, root=root) == [out / "why-tiny" / "why.md"]
    page = (out / "why-tiny" / "why.md").read_text()
    assert page.startswith("# Why 68–75 %?") and "(n=2)" in page and "(n=3)" not in page  # seed 7 left out
    assert "6 of 9 runs finished" in page and "NOT CIFAR-10 test error" in page
    answer = page.split("## The answer\n\n")[1].split("\n")[0]
    assert "between 68.60 % and 75.46 % test accuracy" in answer  # the log's range, from its figures
    assert "Not trained yet: seedlog/adam_on_resnet8" in answer  # the recipe run is missing: no split claimed
    m = re.search(r"the log's setup \(seedlog/adam, ([\d.]+) ± [\d.]+ \(n=2\)\) errs ([+-][\d.]+) points against "
                  r"the paper's recipe \(ablations/baseline, ([\d.]+) ± [\d.]+ \(n=2\)", answer)
    assert m and abs(float(m[1]) - float(m[3]) - float(m[2])) < 0.011, answer  # Δ is the difference of the means
    assert "Not trained yet: ablations/no_lr_decay, ablations/flip_only." in page
    assert "| seedlog/adam_no_augment | no augmentation |" in page and "| seedlog/adam | flip only |" in page
    assert "The log's nearest printed point with both figures, epoch 56" in page
    assert (out / "why-tiny" / "why.png").stat().st_size > 10_000

    # the rest lands: the page fills in, and the same records give the same page
    assert main(["table", "--campaign", str(camp.relative_to(root)), "--data", str(mini_quarter), "--no-progress"]) == 0
    capsys.readouterr()
    write_why_pages(out, root=root)
    page = (out / "why-tiny" / "why.md").read_text()
    assert "Not trained yet" not in page and "net and recipe interact" in page
    assert "Of the single factors measured, ablations/" in page
    first = (out / "why-tiny" / "why.png").read_bytes()
    write_why_pages(out, root=root)
    assert (out / "why-tiny" / "why.md").read_text() == page and (out / "why-tiny" / "why.png").read_bytes() == first
    readme = root / "README.md"  # README's why block is the page's answer, word for word
    readme.write_text("# x\n<!-- why:begin why-tiny -->\ntyped\n<!-- why:end -->\n")
    assert update_readme(readme, out) == ["why-tiny"]
    answer = page.split("## The answer\n\n")[1].split("\n\n")[0]
    assert readme.read_text() == (f"# x\n<!-- why:begin why-tiny -->\n{answer}\n\nGenerated by `make report` from the "
                                  "records in results/: [reports/why-tiny/why.md](reports/why-tiny/why.md).\n"
                                  "<!-- why:end -->\n")


def test_the_shipped_why_campaign_names_its_runs_and_a_bad_plan_is_one_line(tmp_path, write_spec):
    (path, camp), = why_campaigns(ROOT)
    assert path.name == "cpu-why.yaml" and camp.why.log_setup == "seedlog/adam"
    write_spec(tmp_path / "experiments" / "seedlog", "adam", ADAM)
    camp = why_campaign(tmp_path, RUNS[:2])
    with pytest.raises(SpecError, match=r"why-tiny.yaml: why.baseline: ablations/baseline is no run of this campaign "
                                        r"\(expected one of: seedlog/adam, seedlog/adam_no_augment\)$"):
        load_campaign(camp)
    text = camp.read_text().replace("baseline: ablations/baseline", "baseline: ablations")
    camp.write_text(text)
    with pytest.raises(SpecError, match=r"why-tiny.yaml: why.baseline: expected group/name "
                                        r"\(e.g. ablations/baseline\), got 'ablations'"):
        load_campaign(camp)


def test_a_single_seed_factor_within_three_seed_stds_is_due_a_second_seed():
    """Slices a and b measure the seed spread (pooled over their rows of two seeds or more); a single-seed factor
    whose Δ lies within 3× that is named as due a second seed, one clear of it is not, and with no spread measured
    yet the page claims nothing."""
    import pandas as pd

    from harness.core.campaign_file import WhyPlan
    from harness.report.stats import summarize
    from harness.report.why_text import Role, pooled_spread, second_seeds

    def role(ref, *errors):
        runs = pd.DataFrame({"status": "FINISHED", "test_error": list(errors), "best_test_error_over_training":
                             list(errors), "failure": "", "device": "cpu", "commit": "abc"})
        return Role(ref, runs, summarize(runs), 1.0, 20.0, "crop_flip")

    plan = WhyPlan(**{**PLAN, "factors": ["ablations/no_lr_decay", "ablations/flip_only", "ablations/fc_relu"]})
    get = {r.ref: r for r in [role("ablations/baseline", 14.0, 15.0), role("seedlog/adam", 23.0, 24.0, 25.0),
                              role("seedlog/adam_no_augment", 26.0), role("ablations/wide", 24.0, 24.5),
                              role("seedlog/adam_on_resnet8"), role("ablations/no_lr_decay", 16.0),
                              role("ablations/flip_only", 20.0), role("ablations/fc_relu", 15.0, 16.0)]}
    spread, rows = pooled_spread(list(get.values())[:5])  # variances 0.5, 1.0, 0.125 over 1 + 2 + 1 dof
    assert rows == 3 and abs(spread - ((0.5 + 2 * 1.0 + 0.125) / 4) ** 0.5) < 1e-12
    (line, _) = second_seeds(plan, get)
    assert f"pooled over 3 rows of two seeds or more). A single-seed row whose Δ lies within 3× that " \
           f"(±{3 * spread:.2f}) is due a second seed before its verdict stands: ablations/no_lr_decay (+1.50)." in line
    assert "flip_only" not in line and "fc_relu" not in line  # +5.50 is clear of ±2.43; fc_relu has two seeds
    alone = {**get, **{r: role(r, *e) for r, e in [("seedlog/adam", (23.0,)), ("ablations/baseline", (14.5,)),
                                                    ("ablations/wide", (24.0,))]}}
    assert second_seeds(plan, alone) == []  # no row of two seeds: no spread to judge by
