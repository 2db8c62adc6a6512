"""--fastest: a batch trains on the path bench measured fastest on this very CPU for the net most of its runs train,
from the lines kept in reports/bench/*.jsonl; a machine bench never measured trains as given and says how to measure
it. The path is not part of a run's hash: the runs stay the same runs."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from harness.batch.fastest import TrainPath, fastest, main_net
from harness.cli import main
from harness.core.devices import device_name
from harness.core.spec import load_spec, resolve_runs
from harness.tracking.experiments import group_experiments

from .faults import killed_after
from .helpers import TINY

INTEL, AMD = "cpu:x86_64 Intel(R) Xeon(R) Processor x2 threads", "cpu:x86_64 AMD EPYC x2 threads"


def _line(device: str, model: str, batch: int, rows: dict[str, tuple[float, int]]) -> str:
    """One `bench --json` line: each variant's total images/s and its runs at once."""
    return json.dumps({"device": device, "model": model, "batch_size": batch,
                       "variants": {name: {"images_per_s": ips, "jobs": jobs} for name, (ips, jobs) in rows.items()}})


def _runs(folder, write_spec, depth: int, batch: int, name: str):
    text = TINY.replace("depth: 8", f"depth: {depth}").replace("batch_size: 32", f"batch_size: {batch}")
    path = write_spec(folder, name, text)
    return resolve_runs(path, load_spec(path, []), 1.0)


def test_the_fastest_measured_path_is_this_machines_for_the_batchs_main_net(tmp_path, write_spec):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "intel.jsonl").write_text("\n".join([
        _line(INTEL, "resnet32", 128, {"dataloader": (200.0, 1), "ours": (324.1, 1), "ours_channels_last": (359.6, 1),
                                       "ours_compiled_channels_last": (485.0, 1), "ours_channels_last_x2": (447.3, 2),
                                       "ours_group2": (900.0, 1)}),
        _line(INTEL, "resnet20", 128, {"ours_compiled": (999.0, 1)}),  # another net: not this batch's
        _line(INTEL, "resnet32", 256, {"ours_x2": (999.0, 2)})]) + "\n")  # another batch size
    (bench / "amd.jsonl").write_text(_line(AMD, "resnet32", 128, {"ours_channels_last_x2": (373.6, 2),
                                                                  "ours_compiled_channels_last": (236.1, 1)}) + "\n")
    runs = [*_runs(tmp_path / "e", write_spec, 32, 128, "a"), *_runs(tmp_path / "e", write_spec, 32, 128, "b"),
            *_runs(tmp_path / "e", write_spec, 20, 128, "c")]
    assert main_net(runs) == ("resnet32", 128)

    path, line = fastest(bench, INTEL, runs)
    assert path == TrainPath(1, True, True, 485.0, "intel.jsonl")  # a group or the DataLoader is no path of a run
    assert line == (f"path: torch.compile + channels_last, one run at a time, the fastest bench measured for resnet32 "
                    f"at batch 128 on {INTEL} (485 img/s; the fastest with 2 run(s) at once: 447; intel.jsonl)")
    path, _ = fastest(bench, AMD, runs)
    assert (path.jobs, path.compile, path.channels_last) == (2, False, True)
    path, line = fastest(bench, "cpu:x86_64 AMD EPYC x4 threads", runs)  # the same CPU on other threads: unmeasured
    assert path is None and line.startswith("path: no bench line of cpu:x86_64 AMD EPYC x4 threads for resnet32 at "
                                            "batch 128") and "bench --model resnet32 --batch-size 128" in line


@pytest.mark.slow
def test_a_table_trains_on_the_measured_path_and_a_run_resumed_on_another_says_so(store, mini_quarter, write_spec,
                                                                                   capsys, tmp_path, env_with):
    """Asked for two runs at once, the table trains one at a time with channels_last, as this machine's bench line
    says is fastest. Killed there, the run resumes without --fastest, on the spec's own path: the same run (the
    path is not in its hash), its `resumed_on` tag saying what it went on with; then a table finds it done."""
    here = device_name(torch.device("cpu"))
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "here.jsonl").write_text(_line(here, "resnet8", 32, {"ours_channels_last": (500.0, 1),
                                                                  "ours_x2": (100.0, 2)}) + "\n")
    spec = write_spec(tmp_path / "experiments" / "t", "tiny")
    args = ["table", str(spec.parent), "--data", str(mini_quarter), "--no-progress", "--no-report"]
    killed = subprocess.run([sys.executable, "-m", "harness", *args, "--jobs", "2", "--fastest", str(bench)],
                            env=env_with(**killed_after(10)), cwd=tmp_path, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert f"path: channels_last, one run at a time, the fastest bench measured for resnet8 at batch 32 on {here} " \
           "(500 img/s; the fastest with 2 run(s) at once: 100; here.jsonl)" in killed.stderr, killed.stderr
    assert "jobs: 2 runs at a time" not in killed.stderr  # trained here, not on Ray
    c = MlflowClient()
    (run,) = c.search_runs(group_experiments(c, "t"))
    assert run.info.status == "RUNNING" and run.data.params["channels_last"] == "True"

    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"tiny-s0: started on {here}; goes on on {here}, compile False, channels_last False (tag resumed_on)" \
        in err, err
    (run,) = c.search_runs(group_experiments(c, "t"))
    assert run.info.status == "FINISHED" and run.data.tags["resumed_on"] == f"{here}, compile False, channels_last " \
        "False" and run.data.params["channels_last"] == "True"
    assert main(args) == 0
    assert "1 already done" in capsys.readouterr().err


def test_a_study_s_trials_train_on_the_measured_path_without_it_entering_the_study(store, mini_quarter, tmp_path,
                                                                                   capsys, write_spec):
    """`tune --jobs 2 --fastest`: this machine's bench line says one channels_last run is fastest, so the trial trains
    here with channels_last (its child run's params say so); the study records no override it was not given."""
    import optuna

    from .test_tune import TUNE, _children

    here = device_name(torch.device("cpu"))
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "here.jsonl").write_text(_line(here, "resnet8", 32, {"ours_channels_last": (500.0, 1),
                                                                  "ours_x2": (100.0, 2)}) + "\n")
    spec = write_spec(tmp_path / "experiments" / "tuning", "tiny", TUNE)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert main(["tune", str(spec), "--trials", "1", "--study", "f", "--storage", storage, "--budget", "1", "--data",
                 str(mini_quarter), "--jobs", "2", "--fastest", str(bench)]) == 0
    assert f"path: channels_last, one run at a time, the fastest bench measured for resnet8 at batch 32 on {here}" \
        in capsys.readouterr().err
    (child,) = _children("f")
    assert child.data.params["channels_last"] == "True" and child.data.tags["device"] == here
    assert optuna.load_study(study_name="f", storage=storage).user_attrs["overrides"] == []
