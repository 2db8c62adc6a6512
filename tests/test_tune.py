"""Optuna tuning against real storages (SQLite, JournalStorage, PostgreSQL) and a real MLflow store."""

import datetime as dt
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient

from harness.cli import main
from harness.core.devices import device_name
from harness.core.spec import load_spec
from harness.report.index import write_index
from harness.report.tuning import write_tuning_pages
from harness.tune.study import open_storage

from .faults import killed_after

TUNE = """\
model: {arch: resnet, depth: 8}
optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4}
schedule: {name: multistep, milestones: [12, 18], total_iters: 24}
data: {val_fraction: 0.1}
batch_size: 32
seeds: [0]
eval_points: 4
tune:
  lr: [0.00001, 0.3]
  milestone_fractions: [[0.3, 0.6], [0.65, 0.9]]
  gamma: [0.05, 0.5]
  families: [multistep, cosine]
  pruner: median
"""


def _trials(storage, study):
    return optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials(deepcopy=False)


def _children(study):
    c = MlflowClient()
    exp = c.get_experiment_by_name("tuning")
    return c.search_runs([exp.experiment_id], f"tags.study_name = '{study}' and tags.role = 'trial'",
                         max_results=1000)


def test_study_prunes_tracks_in_mlflow_and_exports_a_spec(store, mini, tmp_path, write_spec):
    spec = write_spec(tmp_path / "experiments" / "tuning", "tiny", TUNE)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="minimize")
    for lr in (0.1, 0.1, 0.1, 0.00001):  # three sound trials, then one that cannot learn: the median pruner stops it
        study.enqueue_trial({"family": "multistep", "lr": lr, "milestone_0": 0.5, "milestone_1": 0.75, "gamma": 0.1})
    out = tmp_path / "experiments" / "tuned" / "tiny.yaml"
    assert main(["tune", str(spec), "--trials", "5", "--study", "s", "--storage", storage, "--budget", "1",
                 "--data", str(mini), "--export", str(out), "--plots", str(tmp_path / "plots")]) == 0
    trials = _trials(storage, "s")
    states = {t.number: t.state.name for t in trials}
    assert states[3] == "PRUNED"
    assert {t.user_attrs["device"] for t in trials} == {device_name(torch.device("cpu"))}  # the study's page says it
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == 5
    children = {r.data.tags["trial_number"]: r for r in _children("s")}
    assert sorted(children) == sorted(str(n) for n in states)
    for n, st in states.items():
        run = children[str(n)]
        assert run.data.tags["state"] == {"COMPLETE": "complete", "PRUNED": "pruned"}[st]
        assert run.data.tags["mlflow.parentRunId"]
        assert "test_error" not in run.data.metrics  # the test split is never evaluated while tuning
        assert {"optimizer.lr", "schedule.name", "schedule.milestones"} <= set(run.data.params), run.data.params
        assert run.data.tags["mlflow.note.content"].startswith(f"Trial {n} of Optuna study 's'")
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["cifar10-mini.npz [train]",
                                                                       "cifar10-mini.npz [val]"]  # no test split
        # in the units it trained with, as any run: 24 iterations at budget 1, milestones inside them
        assert run.data.params["schedule.total_iters"] == "24"
        if run.data.params["schedule.name"] == "multistep":
            assert all(0 < int(m) < 24 for m in run.data.params["schedule.milestones"].strip("[]").split(", "))
    assert optuna.load_study(study_name="s", storage=storage).metric_names == ["val_error"]
    best = optuna.load_study(study_name="s", storage=storage).best_trial
    assert children[str(best.number)].data.tags["best"] == "true"
    assert sum(r.data.tags["best"] == "true" for r in children.values()) == 1
    parent = MlflowClient().get_run(children["0"].data.tags["mlflow.parentRunId"])
    defined = parent.data.params  # the study's definition and its winner, as params
    assert (defined["direction"], defined["pruner"], defined["search.lr"], defined["budget"]) == \
        ("minimize", "median", "[1e-05, 0.3]", "1")
    assert defined["best.trial"] == str(best.number) and float(defined["best.lr"]) == pytest.approx(best.params["lr"])
    assert parent.data.tags["mlflow.note.content"].startswith("Optuna study 's'") and parent.inputs.dataset_inputs
    assert (tmp_path / "plots" / "s" / "optimization_history.png").stat().st_size > 0
    tuned = load_spec(out)  # an ordinary, valid spec
    assert tuned.optimizer.lr == pytest.approx(best.params["lr"])
    assert tuned.tune is None and "trial" in tuned.description
    assert tuned.tuned.source == str(spec)  # its twin on tuned.md: the spec the study tuned, at its own schedule


def test_an_rdb_storage_is_opened_without_an_api_optuna_deprecated(tmp_path):
    """The retry of a killed worker's trial goes through RDBStorage's heartbeat_stale_trial_callback, not
    failed_trial_callback (deprecated in Optuna 4.9, gone in 6): opening a storage warns of nothing."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        storage = open_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat=5)
    assert storage.heartbeat_stale_trial_callback is not None and storage.grace_period == 10

def test_the_pruner_counts_in_the_evaluation_points_a_trial_reports_at(store, mini_quarter, tmp_path, capsys,
                                                                       write_spec):
    """train() evaluates every schedule.eval_every iterations; the tuner builds its pruner from the same number,
    so a median pruner's warm-up and hyperband's resources are whole evaluation points. The study records its
    pruner, its page says where a trial may stop, and a resume whose spec moves the evaluation points is refused
    in one line with nothing run."""
    from harness.core.tuning_schema import Pruning
    from harness.report.tuning import study_page

    spec = write_spec(tmp_path / "experiments" / "tuning", "tiny", TUNE.replace("total_iters: 24", "total_iters: 26"))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["tune", str(spec), "--study", "e", "--storage", storage, "--budget", "1", "--data", str(mini_quarter),
            "--plots", str(tmp_path / "plots")]
    assert main(args + ["--trials", "1"]) == 0
    (child,) = _children("e")
    steps = [m.step for m in MlflowClient().get_metric_history(child.info.run_id, "val_error")]
    assert steps == [7, 14, 21, 26]  # ceil(26 / 4) apart, and the last iteration
    study = optuna.load_study(study_name="e", storage=storage)
    assert study.user_attrs["pruner"] == {"name": "median", "first": 7, "total": 26, "reduction_factor": 3,
                                          "startup_trials": 3}
    assert "- Pruner: Optuna's MedianPruner (n_warmup_steps 7, n_startup_trials 3): a trial worse than the median " \
        "of earlier trials at the same iteration stops, from iteration 7 on" in study_page(study, storage, [])
    assert Pruning("hyperband", 334, 4000).words().endswith("a trial may stop at iteration 334, 1002 or 3006, the "
                                                            "rungs of the bracket it falls in")
    capsys.readouterr()
    spec.write_text(spec.read_text().replace("eval_points: 4", "eval_points: 2"))
    assert main(args + ["--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'e'" in err and "n_warmup_steps 7" in err and "n_warmup_steps 13" in err, err
    assert len(_trials(storage, "e")) == 1 and len(_children("e")) == 1


def test_poisoned_test_split_changes_no_trial(store, mini_quarter, tmp_path, write_spec):
    spec = write_spec(tmp_path / "experiments" / "tuning", "tiny", TUNE)
    poisoned = tmp_path / "poisoned.npz"
    with np.load(mini_quarter) as z:
        rng = np.random.default_rng(1)
        np.savez(poisoned, x_train=z["x_train"], y_train=z["y_train"],
                 x_test=rng.integers(0, 256, z["x_test"].shape, dtype=np.uint8),
                 y_test=rng.permutation(z["y_test"]))
    values = []
    for data, name in ((mini_quarter, "clean"), (poisoned, "poisoned")):
        storage = f"sqlite:///{tmp_path}/{name}.db"
        assert main(["tune", str(spec), "--trials", "3", "--study", name, "--storage", storage, "--budget", "1",
                     "--data", str(data), "--plots", str(tmp_path / "plots")]) == 0
        values.append([(t.params, t.value) for t in _trials(storage, name)])
    assert values[0] == values[1] and all(v is not None for _, v in values[0])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_killed_worker_leaves_a_failed_trial_that_the_resumed_study_runs_again(kind, store, mini_quarter, tmp_path,
                                                                               env_with, write_spec):
    spec = write_spec(tmp_path / "experiments" / "tuning", "tiny", TUNE)
    storage = f"sqlite:///{tmp_path}/optuna.db" if kind == "sqlite" else f"journal:{tmp_path}/study.journal"
    cmd = [sys.executable, "-m", "harness", "tune", str(spec), "--trials", "3", "--study", "k", "--storage", storage,
           "--budget", "1", "--data", str(mini_quarter), "--heartbeat", "1", "--plots", str(tmp_path / "plots")]
    p = subprocess.run(cmd, env=env_with(**killed_after(10)), cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert [t.state.name for t in _trials(storage, "k")] == ["RUNNING"]
    time.sleep(3 if kind == "sqlite" else 0)  # past the grace period (2 heartbeats); a journal has none
    assert main(cmd[3:]) == 0
    trials = _trials(storage, "k")
    assert trials[0].state.name == "FAIL"
    assert trials[1].params == trials[0].params  # the cut-off trial is run again, not lost
    assert trials[1].state.name in ("COMPLETE", "PRUNED") and trials[0].state.name == "FAIL"
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3
    killed = [r for r in _children("k") if r.data.tags["trial_number"] == "0"]
    assert len(killed) == 1 and killed[0].info.status == "FAILED"
    (page, *_) = write_tuning_pages(tmp_path / "reports", storage)  # the study's page tells the cut-off trial
    rows = {line.split(" | ")[0]: line for line in page.read_text().splitlines() if line.startswith("| ")}
    assert "| failed (cut off" in rows["| 0"] and "its parameters ran again as trial 1 |" in rows["| 0"], rows
    assert "(a rerun of trial 0) |" in rows["| 1"], rows


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "journal"])
def test_three_workers_share_one_study(kind, store, mini_quarter, tmp_path, request, write_spec):
    storage = request.getfixturevalue("postgres_db") if kind == "postgres" else f"journal:{tmp_path}/journal.log"
    spec = write_spec(tmp_path / "experiments" / "tuning", "tiny", TUNE)
    args = ["tune", str(spec), "--study", "w", "--storage", storage, "--budget", "1", "--data", str(mini_quarter),
            "--workers", "3", "--seed", "7", "--plots", str(tmp_path / "plots")]
    assert main(args + ["--trials", "6"]) == 0
    from harness.core.devices import thread_share
    from harness.tune.study import open_storage

    trials = optuna.load_study(study_name="w", storage=open_storage(storage)).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # each trial number once, none lost
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 6 <= len(finished) <= 6 + 2  # workers stop at 6; at most one in-flight trial each may overshoot
    assert all(t.state.name != "RUNNING" for t in trials)
    children = [r.data.tags["trial_number"] for r in _children("w")]
    assert sorted(children, key=int) == [str(n) for n in sorted(numbers)]  # one MLflow child per trial
    tags = [r.data.tags for r in _children("w")]
    assert {t["sampler_seed"] for t in tags} <= {"7", "8", "9"}  # --seed reaches the workers: worker i uses seed + i
    share = f" x{thread_share(3)} threads"  # the cores split between the workers, not all cores for each
    assert all(t["device"].endswith(share) for t in tags), (share, tags)

    assert main(args + ["--trials", "6"]) == 0  # reached: no worker runs a trial
    assert main(args + ["--trials", str(len(finished) + 1)]) == 0  # one left: one worker runs it, not three
    again = optuna.load_study(study_name="w", storage=open_storage(storage)).get_trials(deepcopy=False)
    assert len(again) == len(trials) + 1 and again[-1].state.name in ("COMPLETE", "PRUNED")
    seeds = {r.data.tags["trial_number"]: r.data.tags["sampler_seed"] for r in _children("w")}
    assert len(seeds) == len(again) and seeds[str(again[-1].number)] == str(7 + len(trials))  # resumed: new seed


def test_unknown_study_is_a_one_line_error_and_creates_nothing(store, mini, tmp_path, capsys, write_spec):
    spec = write_spec(tmp_path / "experiments" / "tuning", "tiny", TUNE)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    for name in ("lr32", "wide"):
        optuna.create_study(study_name=name, storage=storage)
    args = ["tune", str(spec), "--trials", "0", "--storage", storage, "--data", str(mini),
            "--export", str(tmp_path / "out.yaml"), "--plots", str(tmp_path / "plots")]
    assert main(args + ["--study", "lr23"]) == 2  # a typo when exporting
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "Traceback" not in err
    assert "'lr23'" in err and storage in err and "lr32, wide" in err
    assert sorted(optuna.get_all_study_names(storage)) == ["lr32", "wide"]
    missing = f"sqlite:///{tmp_path}/nowhere/optuna.db"  # nor an empty storage where none was
    assert main(args + ["--study", "lr32", "--storage", missing]) == 2
    assert "no studies" in capsys.readouterr().err
    for path in ("nowhere", "out.yaml", "plots", "mlruns"):
        assert not (tmp_path / path).exists(), path


def test_a_rerun_runs_only_what_is_left_at_the_budget_the_study_was_run_at(store, mini, tmp_path, capsys,
                                                                           recwarn, write_spec):
    spec = write_spec(tmp_path / "experiments" / "tuning", "tiny", TUNE)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    out = tmp_path / "tuned.yaml"

    def tune(trials, budget, *more):
        code = main(["tune", str(spec), "--trials", str(trials), "--study", "r", "--storage", storage, "--budget",
                     str(budget), "--data", str(mini), "--plots", str(tmp_path / "plots"), *more])
        return code, capsys.readouterr().err

    assert tune(2, 0.25)[0] == 0
    code, err = tune(2, 0.25)  # --trials 2 reached: nothing more runs
    assert code == 0 and "already has 2 finished trials" in err
    assert len(_trials(storage, "r")) == 2 and len(_children("r")) == 2

    code, err = tune(3, 0.5)  # a different budget would mix incomparable trials in one study
    assert code == 2 and err.count("\n") == 1 and "'r'" in err and "0.25" in err and "0.5" in err, err
    assert "--study" in err and len(_trials(storage, "r")) == 2 and len(_children("r")) == 2
    shutil.copy(mini, tmp_path / "other.npz")  # nor on other data
    code, err = tune(2, 0.25, "--data", str(tmp_path / "other.npz"))
    assert code == 2 and "'r'" in err and "cifar10-mini.npz" in err and "other.npz" in err, err
    attrs = optuna.load_study(study_name="r", storage=storage).user_attrs
    assert attrs["budget"] == 0.25 and attrs["data_id"].startswith("cifar10-mini.npz:")
    assert tune(0, 0.5, "--export", str(out))[0] == 0  # only reads the study: labelled with the trials' budget
    exported = load_spec(out)
    assert "at budget 0.25 on cifar10-mini.npz:" in exported.description
    t = exported.tuned  # the study's provenance travels with the spec (and into its runs' tags)
    assert (t.study, t.budget, t.trials, t.data) == ("r", 0.25, 2, attrs["data_id"])

    code, err = tune(3, 0.25)  # resumed: the sampler draws new points, not trial 0's again
    assert code == 0 and re.search(r"best_val_error=\d+\.\d\d?, ", err), err  # rounded in the summary
    trials = _trials(storage, "r")
    assert len(trials) == 3 and trials[2].params not in (trials[0].params, trials[1].params)
    seeds = {r.data.tags["trial_number"]: r.data.tags["sampler_seed"] for r in _children("r")}
    assert seeds == {"0": "0", "1": "0", "2": "2"}  # --seed 0 + 2 trials already in the study
    # heartbeats and the matplotlib plots are experimental in Optuna: used knowingly, so not warned about
    assert [str(w.message) for w in recwarn if issubclass(w.category, optuna.exceptions.ExperimentalWarning)] == []


def test_workers_are_started_by_a_call_not_by_hidden_flags(tmp_path, capsys):
    """The flags that once carried a worker's index and seed from the parent's argv are gone: a worker is a
    function called with the parent's options (tune.command.work)."""
    for flag in ("--worker-index", "--sampler-seed", "--no-finish"):
        with pytest.raises(SystemExit) as e:
            main(["tune", str(tmp_path / "x.yaml"), flag, *(["1"] if flag != "--no-finish" else [])])
        assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_a_tuned_spec_says_where_its_schedule_came_from_and_trains_only_at_its_studys_budget(capsys):
    """experiments/tuned/resnet32.yaml is the best of 20 trials of 64 iterations on the mini set: `table` at budget
    1 leaves it out and says what it is; at its study's budget it trains. The study's figures carry that title."""
    from harness.core.spec import collect_runs
    from harness.core.spec_hash import hashed
    from harness.run.table import tuned_at_their_budget
    from harness.tracking.figures import study_title
    from harness.tracking.run_facts import tuned_tags

    from .helpers import ROOT

    full = collect_runs([str(ROOT / "experiments/tuned")], [], 1.0).runs
    assert tuned_at_their_budget(full) == []
    err = capsys.readouterr().err
    assert "skipped tuned/resnet32: its schedule is the best of study 'resnet32' (20 trials at budget 0.001 on " \
           "cifar10-mini.npz:56ecc45f2a62d293, validation error 67.57 %), not of budget 1" in err, err
    assert "skipped tuned/cpu-resnet20: its schedule is the best of study 'cpu-resnet20-b1_16'" in err, err
    (short,) = tuned_at_their_budget(collect_runs([str(ROOT / "experiments/tuned")], [], 0.001).runs)
    assert tuned_at_their_budget([short]) == [short]
    assert tuned_tags(short.spec)["tuned.study"] == "resnet32" and tuned_tags(short.spec)["tuned.budget"] == "0.001"
    assert "tuned" not in hashed(short.spec)  # a label: the same schedule is the same run, however it is labelled
    study = optuna.create_study(study_name="lr32")
    study.set_user_attr("budget", 0.0625)
    study.set_user_attr("data_id", "cifar10-full.npz:a44cc18e4ad961b5")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert study_title(study) == ("Optuna study 'lr32': 2 trials at budget 0.0625 on "
                                  "cifar10-full.npz:a44cc18e4ad961b5, validation error (the test split never selects)")


def test_a_study_s_page_says_each_trial_s_schedule_state_time_and_machine(tmp_path):
    """reports/tuning/<study>/study.md, from the study alone: what its trials ran at, each trial's schedule, state
    (where a pruned one stopped, which trial a cut-off one ran again as) and minutes, the machines its time was
    spent on, the best, and the command that goes on with it; the index lists it with the trials' counts."""
    url = f"journal:{tmp_path}/s.journal"
    study = optuna.create_study(study_name="s1", storage=open_storage(url))
    for key, value in {"budget": 0.0625, "data_id": "cifar10-full.npz:a44cc18e4ad961b5", "data": "full.npz",
                       "spec": "experiments/tuning/x.yaml", "overrides": []}.items():
        study.set_user_attr(key, value)
    space = {"family": optuna.distributions.CategoricalDistribution(["multistep", "cosine"]),
             "lr": optuna.distributions.FloatDistribution(0.02, 0.5, log=True),
             "gamma": optuna.distributions.FloatDistribution(0.05, 0.5, log=True)}
    start = dt.datetime(2026, 12, 1, 10, 0)
    one, two = "cpu:x86_64 AMD EPYC x1 threads", "cpu:x86_64 AMD EPYC x2 threads"

    def add(state, params, value, steps, minutes, **attrs):
        study.add_trial(optuna.trial.FrozenTrial(
            number=0, trial_id=0, state=state, value=value, datetime_start=start,
            datetime_complete=start + dt.timedelta(minutes=minutes), params=params,
            distributions={k: space[k] for k in params}, user_attrs=attrs, system_attrs={},
            intermediate_values=steps))

    S = optuna.trial.TrialState
    add(S.COMPLETE, {"family": "cosine", "lr": 0.1392}, 14.16, {4000: 14.16}, 28.4, device=one)
    add(S.PRUNED, {"family": "multistep", "lr": 0.02, "gamma": 0.1}, 19.88, {1000: 25.0, 3006: 19.88}, 21.9,
        device=one)
    add(S.FAIL, {"family": "multistep", "lr": 0.0364, "gamma": 0.17}, None, {668: 40.24}, 200)
    add(S.COMPLETE, {"family": "multistep", "lr": 0.0364, "gamma": 0.17}, 17.58, {4000: 17.58}, 34.0, rerun_of=2,
        device=two)
    out = tmp_path / "reports"
    (page, *figures) = write_tuning_pages(out, url)
    text = page.read_text()
    assert page == out / "tuning" / "s1" / "study.md" and [f.name for f in figures] == [
        "optimization_history.png", "param_importances.png", "parallel_coordinate.png"]
    assert text.startswith("# Optuna study 's1': 4 trials at budget 0.0625 on cifar10-full.npz:a44cc18e4ad961b5, "
                           "validation error (the test split never selects)\n"), text
    for line in ("- Budget: 0.0625", f"- Device: {one} (2 trials), {two} (1 trial), not recorded (1 of 4 trials)",
                 "- Trials: 4 (2 complete, 1 pruned, 1 failed);", "- Training time: 84.3 min, summed over the "
                 "complete and pruned trials", "- Date: 2026-12-01 ", "## Best: trial 0, 14.16 % validation error",
                 "| trial | family | lr | gamma | state | validation error (%) | minutes |",
                 "| 0 | cosine | 0.1392 | — | complete | 14.16 | 28.4 |",
                 "| 1 | multistep | 0.02 | 0.1 | pruned at iteration 3006 | 19.88 | 21.9 |",
                 "| 2 | multistep | 0.0364 | 0.17 | failed (cut off) at iteration 668; its parameters ran again as "
                 "trial 3 | 40.24 | — |",  # a failed trial's end is when it was found cut off: no minutes
                 "| 3 | multistep | 0.0364 | 0.17 | complete (a rerun of trial 2) | 17.58 | 34.0 |",
                 f"`python -m harness tune experiments/tuning/x.yaml --study s1 --storage {url} --budget 0.0625 "
                 "--data full.npz --trials N`", "![param_importances](param_importances.png)"):
        assert line in text, (line, text)
    index = write_index(out).read_text()
    assert (f"- **tuning/s1/**: Optuna study 's1': 4 trials at budget 0.0625 on cifar10-full.npz:a44cc18e4ad961b5, "
            "validation error (the test split never selects). Trials 4 (2 complete, 1 pruned, 1 failed), device "
            f"{one} (2 trials), {two} (1 trial), not recorded (1 of 4 trials), 2026-12-01. Pages: "
            "[study.md](tuning/s1/study.md)") \
        in index, index
