"""A damaged checkpoint never leaves a run that cannot finish: the one before it, or iteration 0, in the same run."""

import pytest
from mlflow import MlflowClient

import harness.core.train
from harness.cli import main

from .helpers import TINY

FINAL_KEYS = ("test_error", "test_loss", "val_error", "val_loss", "train_loss", "train_error")
TEXT = TINY.replace("total_iters: 12", "total_iters: 16")  # evaluation points (and checkpoints) at 4, 8, 12, 16


def _only_run(uri=None):
    c = MlflowClient(uri)
    (r,) = c.search_runs([c.get_experiment_by_name("t").experiment_id])
    return c, r


def _killed_after_10(spec, mini, monkeypatch):
    """The run stopped as Ctrl-C stops it (marked KILLED) before iteration 11: X.pt of iteration 8, X.prev.pt of 4."""
    next_batch = harness.core.train.next_batch

    def interrupted(st, *args, **kwargs):
        if st.it == 10:
            raise KeyboardInterrupt
        return next_batch(st, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(harness.core.train, "next_batch", interrupted)
        assert main(["run", str(spec), "--data", str(mini), "--no-progress"]) == 130


@pytest.fixture(scope="module")
def reference(mini):
    """The final metrics of the same run uninterrupted (train alone: the numbers the runner logs are its own)."""
    import torch
    import yaml

    from harness.core.data import load_arrays, to_device
    from harness.core.spec import Spec, resolve_runs
    from harness.core.train import param_dtype, train

    spec = Spec.model_validate(yaml.safe_load(TEXT))
    run = resolve_runs("experiments/t/tiny.yaml", spec, 1.0)[0]
    data = to_device(load_arrays(mini), spec.data, torch.device("cpu"), param_dtype(spec))
    final, _ = train(run, data, torch.device("cpu"), progress=False)
    return {k: final[k] for k in FINAL_KEYS}


@pytest.mark.parametrize("damaged", ["latest", "both"])
def test_a_truncated_checkpoint_is_named_and_the_run_finishes_on_the_next_call(damaged, reference, store, mini,
                                                                              monkeypatch, capsys, write_spec):
    spec = write_spec(store.parent / "experiments" / "t", "tiny", TEXT)
    _killed_after_10(spec, mini, monkeypatch)
    c, killed = _only_run()
    assert killed.info.status == "KILLED"
    ckpt = store / "checkpoints" / f"{killed.data.tags['spec_hash']}.pt"
    prev = ckpt.with_name(f"{ckpt.stem}.prev.pt")
    assert ckpt.exists() and prev.exists()
    for path in (ckpt, prev) if damaged == "both" else (ckpt,):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short, a full disk
    capsys.readouterr()

    assert main(["run", str(spec), "--data", str(mini), "--no-progress"]) == 0
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
