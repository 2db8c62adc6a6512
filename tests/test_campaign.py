"""Campaign files (`table --campaign FILE`): the same runs, hashes and order as the `run` commands they stand for."""


import pytest
import yaml

from harness.cli import main
from harness.core.campaign_file import campaign_runs, load_campaign
from harness.core.spec import collect_runs, expand_paths

from .helpers import ROOT, TINY

CPU = ROOT / "experiments/campaigns/cpu-b1_32.yaml"
FULL_ID = "cifar10-full.npz:a44cc18e4ad961b5"  # the data id of ../shared/data/cifar10-full.npz


def test_the_cpu_campaign_resolves_to_the_hashes_of_its_run_commands(monkeypatch):
    """Each entry is `run SPEC --budget 0.03125 --set eval_points=8 --set 'seeds=[S]'`: the same spec_hash, so
    a store holding the runs those commands made reports them as done."""
    monkeypatch.chdir(ROOT)
    runs = campaign_runs(CPU)
    camp = load_campaign(CPU)
    assert [f"{r.group}/{r.name}-s{r.seed}" for r in runs][:6] == [
        "table6/resnet20-s0", "table6/plain20-s0", "table6/resnet56-s0", "table6/plain56-s0",
        "ablations/torchvision_resnet34-s0", "ablations/baseline-s0"]
    assert len(runs) == 14 and {r.budget for r in runs} == {0.03125}
    assert {(r.spec.eval_points, r.spec.schedule.total_iters, tuple(r.spec.schedule.milestones)) for r in runs} \
        == {(8, 2000, (1000, 1500))}
    for entry, r in zip(camp.runs, runs, strict=True):
        by_hand = collect_runs([entry.spec], ["eval_points=8", f"seeds=[{entry.seeds[0]}]"], 0.03125).runs
        assert [x.spec_hash(FULL_ID) for x in by_hand] == [r.spec_hash(FULL_ID)], entry
    assert runs[0].spec_hash(FULL_ID) == "d693b0f8852db80c"  # the lead's table6/resnet20 s0 run of this campaign
    assert not [p for p in expand_paths(["experiments"]) if "campaigns" in p.parts]  # a campaign is not a spec


@pytest.mark.slow
def test_a_campaign_skips_what_its_run_commands_finished(store, mini_quarter, capsys, write_spec, monkeypatch):
    exp = store.parent / "experiments"
    spec = write_spec(exp / "table6", "resnet8")
    write_spec(exp / "table6", "plain8", TINY.replace("arch: resnet", "arch: plain"))
    camp = exp / "campaigns" / "tiny.yaml"
    camp.parent.mkdir()
    camp.write_text(yaml.safe_dump({"budget": 0.5, "overrides": ["eval_points=2"], "runs": [
        {"spec": "experiments/table6/resnet8.yaml", "seeds": [1]},
        {"spec": "experiments/table6/plain8.yaml", "seeds": [0]}]}))
    assert main(["run", str(spec.relative_to(store.parent)), "--data", str(mini_quarter), "--budget", "0.5", "--set",
                 "eval_points=2", "--set", "seeds=[1]", "--no-progress", "--publish"]) == 0
    capsys.readouterr()
    assert main(["table", "--campaign", str(camp), "--data", str(mini_quarter), "--no-progress", "--publish",
                 "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "plan: 2 runs in total, 1 already done, 1 to do; ETA" in err, err
    assert "plan: to do, in this order: table6/plain8-s0-b0.5\n" in err
    assert main(["table", "--campaign", str(camp), "--data", str(mini_quarter), "--no-progress", "--no-report"]) == 0
    assert "plan: 2 runs in total, 2 already done, 0 to do" in capsys.readouterr().err
    assert sorted(p.name.rsplit("-", 1)[0] for p in (store.parent / "results/table6").glob("*.json")) == [
        "plain8-s0-b0.5", "resnet8-s1-b0.5"]  # exported after each command
    # A fresh machine: an empty store, the committed records only. Nothing is trained again, unless --force.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store.parent}/fresh/mlflow.db")
    assert main(["table", "--campaign", str(camp), "--data", str(mini_quarter), "--no-progress", "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "plan: 2 runs in total, 2 already done (2 of them by their records in results/), 0 to do" in err, err
    assert main(["table", "--campaign", str(camp), "--data", str(mini_quarter), "--no-progress", "--no-report",
                 "--force"]) == 0
    assert "plan: 2 runs in total, 0 already done, 2 to do" in capsys.readouterr().err


def test_a_variant_is_one_line_of_a_campaign_with_its_own_set_name_and_budget(tmp_path, monkeypatch, write_spec):
    """An entry's `set` and `budget` resolve as `run SPEC --budget B --set ...` would (the same hash), under the
    entry's own name, and its description says what the variant changed."""
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "experiments" / "table6", "resnet8")
    camp = tmp_path / "c.yaml"
    camp.write_text(yaml.safe_dump({"budget": 0.5, "overrides": ["eval_points=2"], "runs": [
        {"spec": "experiments/table6/resnet8.yaml", "seeds": [0]},
        {"spec": "experiments/table6/resnet8.yaml", "seeds": [0], "name": "resnet8_flip", "budget": 1.0,
         "set": ["data.augment=flip", "batch_size=16"]}]}))
    plain, variant = campaign_runs(camp)
    assert (plain.run_name, variant.run_name) == ("resnet8-s0-b0.5", "resnet8_flip-s0")
    assert (variant.spec.data.augment, variant.spec.batch_size, variant.spec.schedule.total_iters) == ("flip", 16, 12)
    assert variant.spec.description.endswith("This variant: data.augment=flip; batch_size=16")
    (by_hand,) = collect_runs(["experiments/table6/resnet8.yaml"], ["eval_points=2", "data.augment=flip",
                                                                     "batch_size=16", "seeds=[0]"], 1.0).runs
    assert by_hand.spec_hash(FULL_ID) == variant.spec_hash(FULL_ID) != plain.spec_hash(FULL_ID)


def test_the_why_campaign_runs_about_22_epochs_each_in_its_slices_order(monkeypatch):
    """experiments/campaigns/cpu-why.yaml: every run sees 1.024 M images (batch 128 at 1/8, batch 256 at 1/16);
    the augmentation slice first, on the log's net and recipe."""
    monkeypatch.chdir(ROOT)
    runs = campaign_runs(ROOT / "experiments/campaigns/cpu-why.yaml")
    assert {r.spec.batch_size * r.spec.schedule.total_iters for r in runs} == {1_024_000}
    assert [(r.name, r.seed, r.spec.data.augment) for r in runs[:3]] == [
        ("adam_no_augment", 0, "none"), ("adam", 0, "flip"), ("adam_crop_flip", 0, "crop_flip")]
    assert len({(r.group, r.run_name) for r in runs}) == len(runs)  # no two runs share a record file name


def test_the_tuned_campaign_sets_the_study_s_best_schedule_against_the_spec_it_tuned(monkeypatch):
    """experiments/campaigns/cpu-tuned.yaml: the tuned spec and its twin (the spec its study tuned, as it is) at the
    study's budget, seeds 0-2 each, apart in the optimizer and schedule alone (the net, data, split, batch and
    length are the same), so tuned.md's Δ is the schedule's."""
    from harness.core.factors import departures, values_of

    monkeypatch.chdir(ROOT)
    runs = campaign_runs(ROOT / "experiments/campaigns/cpu-tuned.yaml")
    tuned = [r for r in runs if r.group == "tuned"]
    twin = [r for r in runs if r.group == "tuning"]
    assert sorted(r.seed for r in tuned) == sorted(r.seed for r in twin) == [0, 1, 2]
    source = tuned[0].spec.tuned.source
    assert (ROOT / source).resolve() == (ROOT / twin[0].source_file).resolve()
    assert {r.budget for r in runs} == {tuned[0].spec.tuned.budget}
    assert set(departures(values_of(twin[0].spec), values_of(tuned[0].spec))) <= {"optimizer", "schedule"}


def test_a_bad_campaign_file_is_one_line(store, mini, capsys, write_spec):
    camp = store.parent / "c.yaml"
    write_spec(store.parent / "experiments" / "table6", "resnet8")
    cases = {
        "budget: 0.5\nruns: [{spec: experiments/table6/resnet8.yaml, seed: [0]}]\n":
            "c.yaml: runs.0.seed: unknown key (expected one of: budget, name, seeds, set, spec)",
        "budget: 0.5\nrun: []\n":
            "c.yaml: run: unknown key (expected one of: budget, description, overrides, runs, why)",
        "budget: 0.5\nruns: [{spec: experiments/table6/nope.yaml, seeds: [0]}]\n":
            "c.yaml: runs.0.spec: experiments/table6/nope.yaml: spec file not found",
        "budget: -1\nruns: [{spec: experiments/table6/resnet8.yaml, seeds: [0]}]\n": "c.yaml: budget: ",
        "budget: 0.5\nbudget: 1\nruns: []\n": "c.yaml: key 'budget' given twice (line 1 and line 2)",
        "budget: 0.5\nruns: [{spec: experiments/table6/resnet8.yaml, seeds: [0], set: [batch_size=16]}]\n":
            "c.yaml: runs.0: name: expected a name for this variant of experiments/table6/resnet8.yaml "
            "(its set: batch_size=16 makes other runs than the spec's own",
        "budget: 0.5\nruns: [{spec: experiments/table6/resnet8.yaml, seeds: [0], name: b, set: [batch_size=0]}]\n":
            "c.yaml: runs.0: experiments/table6/resnet8.yaml: batch_size: Input should be greater than or equal to 1",
        "budget: 0.5\nruns: [{spec: experiments/table6/resnet8.yaml, seeds: [0], name: b, set: [batch_size]}]\n":
            "c.yaml: runs.0: experiments/table6/resnet8.yaml: --set batch_size: expected KEY.PATH=VALUE",
        "budget: 0.5\nruns: [{spec: experiments/table6/resnet8.yaml, seeds: [0], name: ../b, set: [x=1]}]\n":
            "c.yaml: runs.0: name: expected letters, digits",
        "budget: 0.5\nruns: [{spec: experiments/table6/resnet8.yaml, seeds: [0], budget: 0}]\n":
            "c.yaml: runs.0.budget: Input should be greater than 0",
    }
    for text, message in cases.items():
        camp.write_text(text)
        assert main(["table", "--campaign", str(camp), "--data", str(mini), "--no-report"]) == 2, text
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert main(["table", "--campaign", str(camp), "--budget", "0.5", "--data", str(mini)]) == 2
    assert "expected no spec folders and no --budget with it, got --budget 0.5" in capsys.readouterr().err
    assert not (store.parent / "results").exists()


def test_make_cpu_table_runs_this_campaign_then_the_report_from_results():
    """`make -n`: the commands only. DATA defaults to the full CIFAR-10 beside the checkout where there is one."""
    import subprocess

    out = subprocess.run(["make", "-n", "cpu-table", "STAMP=Makefile"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    data = "../shared/data/cifar10-full.npz" if (ROOT / "../shared/data/cifar10-full.npz").is_file() else "data"
    assert f"-m harness table --publish --campaign experiments/campaigns/cpu-b1_32.yaml --data {data} " in out, out
    assert "harness results import results" in out and "harness report --all" in out
    other = subprocess.run(["make", "-n", "cpu-table", "STAMP=Makefile", "DATA=elsewhere"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert "--data elsewhere --download" in other, other
