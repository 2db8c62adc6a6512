"""The fast paths must train the same model: torch.compile vs eager, and the precision options."""

import pytest
import torch

from harness.data import load_arrays, to_device
from harness.spec import Spec, resolve_runs
from harness.train import param_dtype, train

BASE = {"model": {"arch": "resnet", "depth": 8},
        "schedule": {"name": "multistep", "milestones": [4], "total_iters": 6},
        "batch_size": 32, "eval_points": 3}


def _losses(mini, **overrides):
    spec = Spec.model_validate({**BASE, **overrides})
    run = resolve_runs("experiments/t/x.yaml", spec, 1.0)[0]
    data = to_device(load_arrays(mini), spec.data, torch.device("cpu"), param_dtype(spec))
    seen = []
    metrics, model = train(run, data, torch.device("cpu"), on_eval=lambda s, m: seen.append(m["train_loss"]) and False,
                           progress=False)
    return seen, metrics, model


@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_compiled_step_follows_the_eager_trajectory(mini, mode):
    """On CPU "reduce-overhead" has no CUDA graphs to capture and must still train the same model."""
    eager, _, _ = _losses(mini)
    compiled, _, _ = _losses(mini, compile=mode)
    assert len(eager) == len(compiled) == 3
    assert compiled == pytest.approx(eager, rel=1e-3)


@pytest.mark.parametrize("dtype,param", [("bfloat16", torch.float32), ("float64", torch.float64)])
def test_precision_specs_run(mini, dtype, param):
    losses, metrics, model = _losses(mini, dtype=dtype, eval_points=1)  # bf16 is emulated on most CPUs: slow
    assert len(losses) == 1 and all(torch.isfinite(torch.tensor(losses)))
    assert next(model.parameters()).dtype == param
    assert 0 <= metrics["val_error"] <= 100


def test_channels_last_matches_contiguous(mini):
    a, _, _ = _losses(mini)
    b, _, _ = _losses(mini, channels_last=True)
    assert b == pytest.approx(a, rel=1e-3)
