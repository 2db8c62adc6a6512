"""Table 6's recipe: training on every training image (no validation split), and the ResNet-110 warm-up's end."""

import torch
from mlflow import MlflowClient

from harness.cli import main
from harness.core.data import load_arrays, to_device
from harness.core.spec import Spec, resolve_runs
from harness.core.train import param_dtype, train
from harness.tracking.experiments import group_experiments

from .helpers import TINY

NO_VAL = TINY.replace("val_fraction: 0.1", "val_fraction: 0")


def test_a_spec_without_validation_split_trains_on_every_image_with_train_and_test_curves(store, mini, capsys,
                                                                                         write_spec):
    """data.val_fraction 0: all 4068 mini training images train; evaluation points log train and test numbers and
    nothing of validation. Its warm-up never meets its training-error rule, so its cap ends it, and that is said:
    on stderr, in a tag, and in what train returns."""
    spec = write_spec(store.parent / "experiments" / "t", "all", NO_VAL.replace(
        "total_iters: 12}", "total_iters: 12, warmup: {lr: 0.01, until_train_error: 1.0, max_iters: 5}}"))
    assert main(["run", str(spec), "--data", str(mini), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "all-s0: warm-up (lr 0.01) ended by its cap warmup.max_iters=5 at iteration 5" in err, err
    c = MlflowClient()
    (r,) = c.search_runs(group_experiments(c, "t"))
    assert r.info.status == "FINISHED"
    assert "train=4068 val=0 test=1017" in r.data.tags["data"]
    assert r.data.tags["warmup_ended_by"] == "cap at iteration 5"
    metrics = r.data.metrics
    assert {"train_loss", "train_error", "test_loss", "test_error", "lr"} <= metrics.keys()
    assert not {k for k in metrics if k.startswith("val_")}, metrics
    for k in ("train_error", "test_error"):
        assert [m.step for m in c.get_metric_history(r.info.run_id, k)] == [3, 6, 9, 12]
    assert "learning_curve.png" in {a.path for a in c.list_artifacts(r.info.run_id)}


def test_tune_refuses_a_spec_without_validation_split(store, mini, tmp_path, capsys, write_spec):
    """tune scores trials on validation error: a spec without a split is one line, exit 2, and no study or MLflow
    store is made. With a tune: section the spec itself is refused, by any command."""
    spec = write_spec(tmp_path / "experiments" / "tuning", "all", NO_VAL)
    storage = tmp_path / "optuna.db"
    args = ["--trials", "1", "--storage", f"sqlite:///{storage}", "--data", str(mini), "--budget", "1"]
    assert main(["tune", str(spec), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {spec}: data.val_fraction: tune reads the validation "
                                                   "split, and this spec has none"), lines
    tuned = write_spec(tmp_path / "experiments" / "tuning", "sectioned", TINY + "tune: {lr: [0.01, 0.5]}\n")
    assert main(["tune", str(tuned), *args, "--set", "data.val_fraction=0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{tuned}: tune: tuning scores trials on the validation split" in lines[0], lines
    assert not storage.exists() and not store.exists()


def _warmup_run(npz, until: float, cap: int):
    spec = Spec.model_validate({
        "model": {"arch": "resnet", "depth": 8}, "batch_size": 32, "eval_points": 2,
        "schedule": {"milestones": [], "total_iters": 24, "warmup": {"lr": 0.01, "until_train_error": until,
                                                                     "max_iters": cap}}})
    run = resolve_runs("experiments/t/w.yaml", spec, 1.0)[0]
    data = to_device(load_arrays(npz), spec.data, torch.device("cpu"), param_dtype(spec))
    return train(run, data, torch.device("cpu"), progress=False, evaluate_test=False)[0]


def test_warmup_ends_by_the_training_error_or_by_its_cap_and_says_which(mini_quarter, capsys):
    """The paper's rule (training error below the threshold, checked every 20 iterations) or the safety cap."""
    by_rule = _warmup_run(mini_quarter, until=100.0, cap=22)
    assert (by_rule.warmup_ended_by, by_rule.warmup_ended_at) == ("train_error", 20)
    assert "ended at iteration 20: training error below 100%" in capsys.readouterr().err
    by_cap = _warmup_run(mini_quarter, until=1.0, cap=22)
    assert (by_cap.warmup_ended_by, by_cap.warmup_ended_at) == ("cap", 22)
    assert "ended by its cap warmup.max_iters=22 at iteration 22" in capsys.readouterr().err
