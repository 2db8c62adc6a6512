"""End to end on real mini CIFAR-10 with a real SQLite MLflow store: tracking, skip, resume, failure."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow import MlflowClient

from harness.cli import main
from harness.core.devices import worker_devices
from harness.tracking import store as tracking
from harness.tracking.experiments import group_experiments

from .faults import killed_after
from .helpers import ROOT, TINY

FINAL_KEYS = ("test_error", "test_loss", "val_error", "val_loss", "train_loss", "train_error")


def _runs(group="t"):
    c = MlflowClient()
    ids = group_experiments(c, group)
    return c, (c.search_runs(ids, order_by=["attributes.start_time ASC"]) if ids else [])


def test_run_is_tracked_and_rerun_skips(store, mini, capsys, write_spec, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # a tiny run lasts a few seconds
    spec = write_spec(store.parent / "experiments" / "t", "tiny")
    assert main(["run", str(spec), "--data", str(mini), "--no-progress"]) == 0
    c, runs = _runs()
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.info.run_name == "tiny-s0"
    for k in FINAL_KEYS + ("lr", "system/images_per_s"):
        assert k in r.data.metrics, k
    assert 0 <= r.data.metrics["test_error"] <= 100
    tags = r.data.tags
    for k in ("spec_name", "spec_hash", "budget", "data", "device", "git_commit"):
        assert tags.get(k), k
    assert tags["budget"] == "1" and "train=3661 val=407 test=1017" in tags["data"]
    assert tags["official_test_set"] == "false"
    assert r.data.params["model.depth"] == "8" and r.data.params["seed"] == "0"
    assert not {"optimizer.betas", "schedule.patience", "heavy", "name"} & set(r.data.params), r.data.params
    assert "None" not in r.data.params.values() and re.fullmatch(r"[0-9a-f]{64}", tags["weights_sha256"])
    assert {k for k in r.data.metrics if "_seconds" in k or k.endswith(("_per_s", "_iteration"))} == {
        "system/images_per_s", "system/train_seconds", "system/mlflow_log_seconds", "system/model_log_seconds",
        "system/final_iteration"}  # bookkeeping on MLflow's System metrics tab: the Model metrics tab opens on results
    assert [m.step for m in c.get_metric_history(r.info.run_id, "val_error")] == [3, 6, 9, 12]
    arts = {a.path for a in c.list_artifacts(r.info.run_id)}
    assert {"spec.yaml", "learning_curve.png"} <= arts and r.outputs.model_outputs  # the model: tests/test_mlflow.py

    capsys.readouterr()
    assert main(["run", str(spec), "--data", str(mini), "--no-progress"]) == 0
    assert "already FINISHED" in capsys.readouterr().err
    assert len(_runs()[1]) == 1
    system = sorted(k for k in r.data.metrics if k.startswith("system/"))
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_percentage"} <= set(system), system
    assert main(["run", str(spec), "--data", str(mini), "--no-progress", "--force", "--no-system-metrics"]) == 0
    assert len(_runs()[1]) == 2
    assert not [k for k in _runs()[1][1].data.metrics if tracking.record_name(k) is None]  # only the bookkeeping
    assert not list((store / "checkpoints").glob("*.pt"))  # finished runs leave no checkpoint


def _final(c, run_id):
    return {k: c.get_run(run_id).data.metrics[k] for k in FINAL_KEYS}


def test_killed_run_resumes_to_identical_metrics(store, mini_quarter, tmp_path, monkeypatch, env_with, write_spec):
    text = TINY.replace("total_iters: 12", "total_iters: 16")
    spec = write_spec(tmp_path / "experiments" / "t", "tiny", text)
    # Uninterrupted reference in a store of its own.
    ref_uri = f"sqlite:///{tmp_path}/ref/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ref_uri)
    assert main(["run", str(spec), "--data", str(mini_quarter), "--no-progress"]) == 0
    c = MlflowClient(ref_uri)
    ref_run = c.search_runs(group_experiments(c, "t"))[0]
    reference = _final(c, ref_run.info.run_id)

    # Same spec, SIGKILLed right after iteration 10 (last checkpoint at 8), then rerun.
    uri = f"sqlite:///{tmp_path}/killed/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    p = subprocess.run([sys.executable, "-m", "harness", "run", str(spec), "--data", str(mini_quarter),
                        "--no-progress"],
                       env=env_with(MLFLOW_TRACKING_URI=uri, **killed_after(10)), cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    c2 = MlflowClient(uri)
    killed = c2.search_runs(group_experiments(c2, "t"))
    assert len(killed) == 1 and killed[0].info.status == "RUNNING"
    assert list((tmp_path / "killed" / "checkpoints").glob("*.pt"))
    assert main(["run", str(spec), "--data", str(mini_quarter), "--no-progress"]) == 0
    resumed = c2.search_runs(group_experiments(c2, "t"))
    assert len(resumed) == 1 and resumed[0].info.run_id == killed[0].info.run_id
    assert resumed[0].info.status == "FINISHED" and "resumed_on" not in resumed[0].data.tags  # the same machine
    assert _final(c2, resumed[0].info.run_id) == reference  # bit-exact on CPU
    steps = [m.step for m in c2.get_metric_history(resumed[0].info.run_id, "val_error")]
    assert steps == [4, 8, 12, 16]


def test_divergence_is_recorded_and_the_batch_goes_on(store, mini_quarter, capsys, write_spec):
    folder = store.parent / "experiments" / "t"
    bad = write_spec(folder, "a_diverges", TINY.replace("lr: 0.1", "lr: 1.0e+30"))
    good = write_spec(folder, "b_fine")
    code = main(["run", str(bad), str(good), "--data", str(mini_quarter), "--no-progress"])
    assert code == 1  # not everything finished
    c, runs = _runs()
    by_name = {r.info.run_name: r for r in runs}
    assert by_name["a_diverges-s0"].info.status == "FAILED"
    assert by_name["a_diverges-s0"].data.tags["failure"] == "diverged"
    assert by_name["b_fine-s0"].info.status == "FINISHED"
    err = capsys.readouterr().err
    assert "a_diverges-s0: FAILED, " in err and "2 runs: 1 diverged, 1 finished in " in err, err
    # a diverged run is not retried silently
    assert main(["run", str(bad), "--data", str(mini_quarter), "--no-progress"]) == 1
    assert len(_runs()[1]) == 2


def test_bad_input_and_errors_are_tagged_and_the_batch_goes_on(store, mini_quarter, capsys, monkeypatch, write_spec):
    """Beside divergence: a spec the data cannot serve ends `bad_input` with its one-line message, any other
    exception `error` named by its type; each run is FAILED and the batch goes on."""
    folder = store.parent / "experiments" / "t"
    good = write_spec(folder, "b_fine")
    from harness.batch import life
    from harness.errors import UserError

    real_train = life.train_group

    def refuses_a(members, *args, **kwargs):  # a run the data cannot serve, found only once it trains
        if members[0].run.name == "a_bad":
            raise UserError("data.val_size: expected at most 4067 for this data")
        return real_train(members, *args, **kwargs)

    monkeypatch.setattr(life, "train_group", refuses_a)
    bad_spec = write_spec(folder, "a_bad", TINY.replace("eval_points: 4", "eval_points: 3"))
    assert main(["run", str(bad_spec), str(good), "--data", str(mini_quarter), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "a_bad-s0: FAILED, data.val_size: expected at most 4067" in err, err
    assert "2 runs: 1 failed, 1 finished in " in err, err
    by_name = {r.info.run_name: r for r in _runs()[1]}
    bad = by_name["a_bad-s0"]
    assert (bad.info.status, bad.data.tags["failure"]) == ("FAILED", "bad_input")
    assert bad.data.tags["failure_message"].startswith("data.val_size: expected at most 4067")
    assert by_name["b_fine-s0"].info.status == "FINISHED"

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(life, "train_group", boom)
    assert main(["run", str(good), "--data", str(mini_quarter), "--no-progress", "--force"]) == 1
    assert "b_fine-s0: FAILED with RuntimeError: boom" in capsys.readouterr().err
    newest = _runs()[1][-1]
    assert (newest.info.status, newest.data.tags["failure"], newest.data.tags["failure_message"]) == \
        ("FAILED", "error", "RuntimeError: boom")


def test_resnet110_style_warmup_returns_to_base_lr(store, mini_quarter, write_spec):
    text = TINY.replace("total_iters: 12}", "total_iters: 60, warmup: {lr: 0.01, until_train_error: 100.0, "
                        "max_iters: 50}}").replace("[8, 10]", "[55]").replace("eval_points: 4", "eval_points: 6")
    spec = write_spec(store.parent / "experiments" / "t", "warm", text)
    assert main(["run", str(spec), "--data", str(mini_quarter), "--no-progress"]) == 0
    c, runs = _runs()
    lrs = [m.value for m in sorted(c.get_metric_history(runs[0].info.run_id, "lr"), key=lambda m: m.step)]
    # error < 100 % at the first check (iteration 20) ends warm-up; lr goes back to 0.1, then /10 at 55
    assert lrs[:1] == [0.01] and lrs[2:5] == [0.1, 0.1, 0.1] and lrs[-1] == 0.1 * 0.1


def test_help_is_the_map(env_with):
    out = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True, cwd=ROOT,
                         env=env_with(COLUMNS=200)).stdout
    for cmd in ("run", "validate", "report", "tune", "table", "bench"):
        assert cmd in out
    assert os.path.isfile(ROOT / "Makefile")


def test_offline_run_then_import_is_a_finished_mlflow_run(store, mini_quarter, tmp_path, capsys, write_spec):
    """The GPU machine has no MLflow: `run --offline` writes a record, `import` makes it the run `run` would
    have made, so a later `run` of the same spec skips it and a second import adds nothing."""
    spec = write_spec(tmp_path / "experiments" / "t", "tiny")
    out = tmp_path / "records"
    assert main(["run", str(spec), "--data", str(mini_quarter), "--no-progress", "--offline", str(out)]) == 0
    assert not store.exists() or not _runs()[1]  # nothing in MLflow yet
    (record,) = out.glob("*/record.json")
    assert {p.name for p in record.parent.iterdir()} == {"record.json", "model"}  # checkpoint gone
    assert main(["import", str(out)]) == 0
    c, runs = _runs()
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    r = runs[0]
    assert r.data.tags["spec_hash"] == record.parent.name and r.data.tags["imported_from"] == str(record)
    assert [m.step for m in c.get_metric_history(r.info.run_id, "val_error")] == [3, 6, 9, 12]
    assert 0 <= r.data.metrics["test_error"] <= 100 and r.data.params["model.depth"] == "8"
    assert {a.path for a in c.list_artifacts(r.info.run_id)} >= {"spec.yaml", "learning_curve.png"}
    assert r.outputs.model_outputs and r.inputs.dataset_inputs
    capsys.readouterr()
    assert main(["import", str(out)]) == 0 and "not imported again" in capsys.readouterr().err
    assert main(["run", str(spec), "--data", str(mini_quarter), "--no-progress"]) == 0
    assert "already FINISHED" in capsys.readouterr().err and len(_runs()[1]) == 1


def test_offline_run_killed_resumes_from_its_folder(store, mini_quarter, tmp_path, env_with, write_spec):
    text = TINY.replace("total_iters: 12", "total_iters: 16")
    spec = write_spec(tmp_path / "experiments" / "t", "tiny", text)
    out = tmp_path / "records"
    args = [sys.executable, "-m", "harness", "run", str(spec), "--data", str(mini_quarter), "--no-progress",
            "--offline", str(out)]
    p = subprocess.run(args, env=env_with(**killed_after(10)), cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    (folder,) = out.iterdir()
    assert (folder / "checkpoint.pt").exists() and not (folder / "record.json").exists()
    p = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "resuming" in p.stderr, p.stderr
    history = json.loads((folder / "record.json").read_text())["history"]
    assert [h["step"] for h in history] == [4, 8, 12, 16]  # the repeated evaluation is kept once


def test_import_rejects_a_folder_without_records(store, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["import", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no record.json" in err[0]


def test_time_left_comes_from_the_batchs_own_rate_weighted_by_cost():
    """Skipped runs took no time and do not count as trained; what is left is weighted by each run's cost."""
    from types import SimpleNamespace

    from harness.batch.cost import Rate

    small, skipped, big = SimpleNamespace(c=1.0), SimpleNamespace(c=1.0), SimpleNamespace(c=3.0)
    rate = Rate([small, skipped, big], cost=lambda r: r.c)
    assert rate.line().endswith("s elapsed")  # nothing trained yet: no guess
    rate.t0 -= 100  # as if the batch had started 100 s ago
    rate.done(skipped, "skipped")
    assert "left" not in rate.line()
    rate.done(small, "finished")  # 1 unit in ~100 s, 3 left
    assert re.search(r"^10\ds elapsed, ~5 min left at the rate so far$", rate.line()), rate.line()
    rate.done(big, "finished")
    assert "left" not in rate.line()


def test_jobs_deal_workers_over_the_gpus_unless_one_is_named():
    """`--jobs 4` on two GPUs puts two workers on each; a named GPU, one GPU or the CPU keeps them all together."""
    assert worker_devices(torch.device("cuda"), 4, gpus=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_devices(torch.device("cuda"), 3, gpus=4) == ["cuda:0", "cuda:1", "cuda:2"]
    assert worker_devices(torch.device("cuda:1"), 2, gpus=4) == ["cuda:1", "cuda:1"]
    assert worker_devices(torch.device("cuda"), 2, gpus=1) == ["cuda", "cuda"]
    assert worker_devices(torch.device("cpu"), 2, gpus=0) == ["cpu", "cpu"]


@pytest.mark.slow
def test_jobs_run_several_at_once_and_a_killed_batch_resumes_to_the_same_numbers(store, mini_quarter, tmp_path, capsys,
                                                                                 monkeypatch, env_with, write_spec,
                                                                                 one_torch_thread):
    """`--jobs 2`: two Ray tasks on an embedded Ray with one CPU thread each, nothing set up. Killed mid-run
    (both workers SIGKILL themselves after iteration 10; Ray told not to retry), the batch exits non-zero, leaves
    its runs RUNNING with checkpoints in the --checkpoint-dir the driver was given (a value each task carries),
    and a rerun resumes them to the numbers of the same runs made one after the other on one thread."""
    spec = write_spec(tmp_path / "experiments" / "t", "tiny",
                      TINY.replace("total_iters: 12", "total_iters: 16").replace("seeds: [0]", "seeds: [0, 1]")
                      .replace("eval_points: 4", "eval_points: 2"))

    def run(uri, jobs, **env):
        return subprocess.run([sys.executable, "-m", "harness", "run", str(spec), "--data", str(mini_quarter),
                               "--no-progress", "--jobs", str(jobs), "--checkpoint-dir", "kept"],
                              env=env_with(MLFLOW_TRACKING_URI=uri, **env), cwd=tmp_path, capture_output=True,
                              text=True)

    def finals(uri):
        c = MlflowClient(uri)
        runs = c.search_runs(group_experiments(c, "t"))
        return {r.info.run_name: (r.info.status, r.data.tags["device"], _final(c, r.info.run_id)) for r in runs}

    ref_uri = f"sqlite:///{tmp_path}/ref/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ref_uri)
    assert main(["run", str(spec), "--data", str(mini_quarter), "--no-progress"]) == 0
    reference = finals(ref_uri)

    uri = f"sqlite:///{tmp_path}/jobs/mlflow.db"
    p = run(uri, 2, OMP_NUM_THREADS=2, HARNESS_RAY_MAX_RETRIES=0, **killed_after(10))  # Ray must not retry them
    assert p.returncode == 1 and "2 runs at a time on cpu, 1 CPU thread(s) each" in p.stderr, p.stderr
    assert p.stderr.count("mlflow: creating the store") == 1, p.stderr  # by the parent, not a race
    c = MlflowClient(uri)
    killed = c.search_runs(group_experiments(c, "t"))
    assert sorted(r.info.status for r in killed) == ["RUNNING", "RUNNING"]
    assert len(list((tmp_path / "kept").glob("*.pt"))) == 2 and not (tmp_path / "jobs" / "checkpoints").exists()

    p = run(uri, 2, OMP_NUM_THREADS=2)
    assert p.returncode == 0 and p.stderr.count("resuming MLflow run") == 2, p.stderr
    assert "tiny-s1 it 16/16: train_loss" in p.stderr  # a line per evaluation point stands in for the bars
    resumed = finals(uri)
    assert set(resumed) == set(reference) == {"tiny-s0", "tiny-s1"}
    for name, (status, device, metrics) in resumed.items():
        assert status == "FINISHED" and device.endswith("x1 threads"), (name, device)
        assert metrics == reference[name][2], name  # bit-exact: same thread count, same seeds
    assert not list((tmp_path / "kept").glob("*.pt"))

    assert main(["run", str(spec), "--data", str(mini_quarter), "--jobs", "0"]) == 2
    assert "--jobs: expected a whole number of runs at a time, at least 1, got 0" in capsys.readouterr().err


def _running(db) -> int:
    import sqlite3

    try:
        with sqlite3.connect(db, timeout=30) as con:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


@pytest.mark.slow
def test_ctrl_c_under_jobs_marks_runs_killed_and_exits_130(tmp_path, mini_quarter, env_with, write_spec):
    """Ctrl-C reaches the whole process group: each worker marks its run KILLED (resumable), no queued run starts,
    and the command ends with one line and exit 130 instead of waiting for the batch."""
    spec = write_spec(tmp_path / "experiments" / "t", "long", TINY.replace("total_iters: 12", "total_iters: 3000")
                      .replace("seeds: [0]", "seeds: [0, 1, 2]").replace("eval_points: 4", "eval_points: 2"))
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    p = subprocess.Popen([sys.executable, "-m", "harness", "run", str(spec), "--data", str(mini_quarter), "--jobs",
                          "2"],
                         env=env_with(MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS=2), cwd=tmp_path, text=True,
                         stderr=subprocess.PIPE, start_new_session=True,  # a terminal's Ctrl-C hits the group
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while _running(tmp_path / "mlruns" / "mlflow.db") < 2:  # both tasks are training (Ray's forwarded log lines lag)
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.5)
    time.sleep(1)  # the run is created just before training starts: let both tasks get into it
    os.killpg(p.pid, signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130 and "interrupted: the same command resumes killed runs" in err, err[-3000:]
    assert "Traceback" not in err and "leaked semaphore" not in err, err[-3000:]
    c = MlflowClient(uri)
    runs = c.search_runs(group_experiments(c, "t"))
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"], err[-3000:]  # the third never started


def test_the_command_line_says_its_version_and_each_subcommand_its_own_usage(capsys):
    """--version; a flag a subcommand does not take is that subcommand's error with its own usage line; tune takes
    --jobs as run and table do; report's --budget reads BUDGET."""
    from harness.parser import build_parser, prog_name

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("harness 0.1.0")
    with pytest.raises(SystemExit) as e:
        main(["run", "x.yaml", "--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: harness run ") and "unrecognized arguments: --bogus" in err
    assert build_parser().parse_args(["tune", "s.yaml", "--jobs", "3"]).workers == 3
    assert "--budget BUDGET" in build_parser().format_help() or "--budget BUDGET" in \
        build_parser()._subparsers._group_actions[0].choices["report"].format_help()
    assert prog_name("/usr/bin/resnet-repro") == "resnet-repro" and prog_name("harness/__main__.py") == \
        "python -m harness"


def test_a_set_that_makes_a_variant_says_it_keeps_the_spec_s_name_and_how_to_name_it(capsys):
    """`run --set data.val_fraction=0.2` trains other runs than resnet20.yaml's own under the name resnet20: one
    line says so and names `--set name=NAME`; seeds, the speed path or a name given say nothing."""
    from harness.run.command import say_when_a_variant_keeps_the_name
    from harness.run.validate import load_all

    spec = str(ROOT / "experiments/table6/resnet20.yaml")
    for overrides, said in ((["seeds=[1]"], False), (["channels_last=true"], False),
                            (["data.val_fraction=0.2", "name=resnet20_val20"], False),
                            (["seeds=[1]", "data.val_fraction=0.2"], True), (["eval_points=2"], True)):
        say_when_a_variant_keeps_the_name([spec], overrides)
        err = capsys.readouterr().err
        assert bool(err) == said, (overrides, err)
        if said and "eval_points=2" in overrides:  # the README's try at a budget only its overrides fit: one line
            assert main(["run", spec, "--budget", "0.0002", "--set", "eval_points=2", "--data", "nope.npz"]) == 2
            assert "run: --set eval_points=2 makes other runs" in capsys.readouterr().err
        elif said:
            assert err == ("run: --set data.val_fraction=0.2 makes other runs than the spec's own, under its name "
                           "(resnet20; MLflow and the records tell them apart by params and spec_hash); `--set "
                           "name=NAME` names the variant\n")
    named = load_all([spec], ["data.val_fraction=0.2", "name=resnet20_val20", "seeds=[0]"], 0.01)
    assert [r.run_name for r in named] == ["resnet20_val20-s0-b0.01"]
