"""The fast paths must train the same model: torch.compile vs eager, and the precision options."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from harness.core.data import load_arrays, to_device, train_batch
from harness.core.spec import Spec, resolve_runs
from harness.core.train import autocast_for, evaluate, fresh_model, make_step, param_dtype, train

BASE = {"model": {"arch": "resnet", "depth": 8},
        "schedule": {"name": "multistep", "milestones": [4], "total_iters": 6},
        "batch_size": 32, "eval_points": 3}


def _losses(npz, **overrides):
    spec = Spec.model_validate({**BASE, **overrides})
    run = resolve_runs("experiments/t/x.yaml", spec, 1.0)[0]
    data = to_device(load_arrays(npz), spec.data, torch.device("cpu"), param_dtype(spec))
    seen = []
    result, model = train(run, data, torch.device("cpu"), on_eval=lambda s, m: seen.append(m["train_loss"]) and False,
                          progress=False)
    return seen, result.metrics, model


@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_compiled_step_follows_the_eager_trajectory(mini_quarter, mode):
    """On CPU "reduce-overhead" has no CUDA graphs to capture and must still train the same model."""
    eager, _, _ = _losses(mini_quarter)
    compiled, _, _ = _losses(mini_quarter, compile=mode)
    assert len(eager) == len(compiled) == 3
    assert compiled == pytest.approx(eager, rel=1e-3)


@pytest.mark.parametrize("dtype,param", [("bfloat16", torch.float32), ("float64", torch.float64)])
def test_precision_specs_run(mini_quarter, dtype, param):
    losses, metrics, model = _losses(mini_quarter, dtype=dtype, eval_points=1)  # bf16 is emulated on most CPUs: slow
    assert len(losses) == 1 and all(torch.isfinite(torch.tensor(losses)))
    assert next(model.parameters()).dtype == param
    assert 0 <= metrics["val_error"] <= 100


def test_channels_last_matches_contiguous(mini_quarter):
    a, _, _ = _losses(mini_quarter)
    b, _, _ = _losses(mini_quarter, channels_last=True)
    assert b == pytest.approx(a, rel=1e-3)


class FloatDtypes(TorchDispatchMode):
    """Every operator that produces a floating-point tensor, by the dtypes it produced."""

    def __init__(self):
        super().__init__()
        self.ops: dict[torch.dtype, set[str]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.ops.setdefault(t.dtype, set()).add(str(func))
        return out


def test_float64_is_float64_throughout_the_step(mini_quarter):
    """The seed log's float64: the mean, the normalised and augmented batch, forward, loss, backward, optimizer
    and evaluation compute in float64 (the loss and the mean were float32). The one float32 tensor is the flip
    draw, a coin toss kept in float32 in every dtype so that one seed gives the same batches in each."""
    spec = Spec.model_validate({**BASE, "dtype": "float64", "batch_size": 8})
    run = resolve_runs("experiments/t/x.yaml", spec, 1.0)[0]
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    model, opt = fresh_model(run, cpu)  # built in float32 by torch.nn, then cast: no part of a step
    step = make_step(model, opt, spec, cpu)
    with FloatDtypes() as seen:
        data = to_device(load_arrays(mini_quarter), spec.data, cpu, param_dtype(spec))
        for _ in range(2):
            step(*train_batch(data, torch.arange(8), "crop_flip", gen), 0.1)
        evaluate(model, data.x_val[:16], data.y_val[:16], data.eval_mean, torch.float64, autocast_for(spec, cpu))
    assert seen.ops.pop(torch.float32, set()) <= {"aten.rand.generator"}, seen.ops
    assert set(seen.ops) == {torch.float64}, {str(k): sorted(v)[:5] for k, v in seen.ops.items()}
    assert {"aten._log_softmax.default", "aten.mean.dim"} <= seen.ops[torch.float64]
