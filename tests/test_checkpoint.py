"""A damaged checkpoint never leaves a run that cannot finish: the one before it, or iteration 0, in the same run."""

import pytest
from mlflow import MlflowClient

import harness.core.train
from harness.cli import main
from harness.tracking.experiments import group_experiments

from .helpers import TINY

FINAL_KEYS = ("test_error", "test_loss", "val_error", "val_loss", "train_loss", "train_error")
TEXT = TINY.replace("total_iters: 12", "total_iters: 16")  # evaluation points (and checkpoints) at 4, 8, 12, 16


def _only_run(uri=None):
    c = MlflowClient(uri)
    (r,) = c.search_runs(group_experiments(c, "t"))
    return c, r


def _killed_after_10(spec, npz, monkeypatch):
    """The run stopped as Ctrl-C stops it (marked KILLED) before iteration 11: X.pt of iteration 8, X.prev.pt of 4."""
    next_batch = harness.core.train.next_batch

    def interrupted(st, *args, **kwargs):
        if st.it == 10:
            raise KeyboardInterrupt
        return next_batch(st, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(harness.core.train, "next_batch", interrupted)
        assert main(["run", str(spec), "--data", str(npz), "--no-progress"]) == 130


@pytest.fixture(scope="module")
def reference(mini_quarter):
    """The final metrics of the same run uninterrupted (train alone: the numbers the runner logs are its own)."""
    import torch
    import yaml

    from harness.core.data import load_arrays, to_device
    from harness.core.spec import Spec, resolve_runs
    from harness.core.train import param_dtype, train

    spec = Spec.model_validate(yaml.safe_load(TEXT))
    run = resolve_runs("experiments/t/tiny.yaml", spec, 1.0)[0]
    data = to_device(load_arrays(mini_quarter), spec.data, torch.device("cpu"), param_dtype(spec))
    final, _ = train(run, data, torch.device("cpu"), progress=False)
    return {k: final.metrics[k] for k in FINAL_KEYS}


@pytest.mark.parametrize("damaged", ["latest", "both"])
def test_a_truncated_checkpoint_is_named_and_the_run_finishes_on_the_next_call(damaged, reference, store, mini_quarter,
                                                                              monkeypatch, capsys, write_spec):
    spec = write_spec(store.parent / "experiments" / "t", "tiny", TEXT)
    _killed_after_10(spec, mini_quarter, monkeypatch)
    c, killed = _only_run()
    assert killed.info.status == "KILLED"
    ckpt = store / "checkpoints" / f"{killed.data.tags['spec_hash']}.pt"
    prev = ckpt.with_name(f"{ckpt.stem}.prev.pt")
    assert ckpt.exists() and prev.exists()
    for path in (ckpt, prev) if damaged == "both" else (ckpt,):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short, a full disk
    capsys.readouterr()

    assert main(["run", str(spec), "--data", str(mini_quarter), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"{ckpt}: damaged checkpoint (" in err and "truncated or not a torch.save archive" in err, err
    c, r = _only_run()
    assert r.info.run_id == killed.info.run_id and r.info.status == "FINISHED"
    tag = r.data.tags["checkpoint_restart"]
    if damaged == "latest":
        assert tag.startswith(f"{ckpt.name}: resumed from {prev.name} at iteration 4 ({ckpt}: damaged checkpoint")
    else:
        assert tag.startswith(f"{ckpt.name}: restarted from iteration 0, no checkpoint loads") and str(prev) in tag
    assert {k: r.data.metrics[k] for k in FINAL_KEYS} == reference  # the same run, bit for bit on a CPU
    assert not list(ckpt.parent.glob("*.pt"))  # a finished run keeps no checkpoint, current or previous


class _RunsCode:
    """What a crafted checkpoint holds: an object whose unpickling calls exec, which here writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_checkpoint_that_would_run_code_is_refused_and_the_run_restarts(store, mini_quarter, monkeypatch, capsys,
                                                                           write_spec):
    """Both checkpoints replaced by files whose unpickling runs code (a shared --checkpoint-dir anyone can write):
    neither is unpickled, each is one line, and the run restarts from iteration 0 and finishes."""
    import torch

    spec = write_spec(store.parent / "experiments" / "t", "tiny", TEXT)
    _killed_after_10(spec, mini_quarter, monkeypatch)
    c, killed = _only_run()
    ckpt = store / "checkpoints" / f"{killed.data.tags['spec_hash']}.pt"
    marker = store.parent / "code-ran"
    for path in (ckpt, ckpt.with_name(f"{ckpt.stem}.prev.pt")):
        torch.save({"model": _RunsCode(marker), "loop": {"it": 8}}, path)
    capsys.readouterr()

    assert main(["run", str(spec), "--data", str(mini_quarter), "--no-progress"]) == 0
    assert not marker.exists()  # nothing in the file ran
    refused = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{ckpt.parent}/")]
    assert len(refused) == 2 and all("refused: it holds objects beyond tensors" in line and "exec" in line
                                     for line in refused), refused
    c, r = _only_run()
    assert r.info.status == "FINISHED"
    assert r.data.tags["checkpoint_restart"].startswith(f"{ckpt.name}: restarted from iteration 0")


def test_a_checkpoint_holds_only_what_weights_only_loads(tmp_path):
    """Every part of the state is a tensor, a container or a number: the file reads back with weights_only=True."""
    import torch

    from harness.core.checkpoint import LoopState, load_checkpoint, save_checkpoint
    from harness.core.schedule import Schedule
    from harness.core.spec import ScheduleSpec

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched, gen = Schedule(ScheduleSpec(name="plateau", total_iters=10, milestones=[5]), 0.1, 2), torch.Generator()
    path = tmp_path / "x.pt"
    save_checkpoint(path, model, opt, sched, gen, LoopState(it=3, perm=torch.arange(4), pos=2))
    torch.load(path, weights_only=True)
    st = load_checkpoint(path, model, opt, sched, gen)
    assert (st.it, st.pos, st.perm.tolist()) == (3, 2, [0, 1, 2, 3])


@pytest.mark.slow
def test_sigterm_ends_a_run_as_ctrl_c_does_and_the_rerun_logs_no_step_twice(store, mini_quarter, write_spec, env_with):
    """SIGTERM (a scheduler's stop) to a real `harness run` once it has a checkpoint: exit 143, the run KILLED with
    its checkpoint kept; the same command resumes that MLflow run to FINISHED, every metric step logged once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .helpers import ROOT

    text = TEXT.replace("total_iters: 16", "total_iters: 160").replace("[8, 10]", "[120, 140]") \
        .replace("eval_points: 4", "eval_points: 8")
    spec = write_spec(store.parent / "experiments" / "t", "tiny", text)
    cmd = [sys.executable, "-m", "harness", "run", str(spec), "--data", str(mini_quarter), "--no-progress"]
    env = env_with(PYTHONPATH=ROOT, OMP_NUM_THREADS=1)
    p = subprocess.Popen(cmd, env=env, cwd=store.parent, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((store / "checkpoints").glob("*.pt")):
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 143, err
    assert "terminated (SIGTERM): the same command resumes killed runs" in err and "Traceback" not in err, err
    c, killed = _only_run()
    assert killed.info.status == "KILLED" and list((store / "checkpoints").glob("*.pt")), (killed.info.status, err)

    done = subprocess.run(cmd, env=env, cwd=store.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "resuming MLflow run" in done.stderr, done.stderr
    c, r = _only_run()
    assert r.info.run_id == killed.info.run_id and r.info.status == "FINISHED"
    for key in ("val_error", "test_error", "train_loss", "lr"):
        steps = [m.step for m in c.get_metric_history(r.info.run_id, key)]
        assert steps == sorted(set(steps)) == list(range(20, 161, 20)), (key, steps)
