"""What a run costs: its training and evaluation GFLOPs, this device's seconds per GFLOP, and the time a batch has
left at the rate it has kept so far.

A run is weighed in FLOPs rather than iterations so that one figure holds for any mix of depths, batch sizes and
split sizes: `table`'s plan turns it into an ETA with a short measured step, and a running batch into time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from harness.core.data import Arrays
from harness.core.models import build_model, train_flops_per_image
from harness.core.spec import ModelSpec, RunSpec
from harness.tracking.status import Status


def run_gflops(run: RunSpec, n_val: int, n_test: int) -> float:
    s = run.spec
    per_image = train_flops_per_image(build_model(s.model)) / 1e9
    dtype_cost = 2.0 if s.dtype == "float64" else 1.0
    train = per_image * s.batch_size * s.schedule.total_iters
    evals = per_image / 3 * (n_val + n_test) * min(s.eval_points, s.schedule.total_iters)
    return dtype_cost * (train + evals)


def gflops_on_data(run: RunSpec, arrays: Arrays) -> float:
    """A run's training and evaluation GFLOPs with these arrays' split sizes: the weight of a run in an ETA."""
    n = len(arrays.x_train)
    n_val = round(n * (run.spec.data.val_fraction or 0)) or (run.spec.data.val_size or 0)
    return run_gflops(run, n_val, len(arrays.x_test))


def seconds_per_gflop(device: torch.device) -> float:
    """Time two ResNet-20 training steps at batch 128 after one warm-up step."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(depth=20)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    t0 = 0.0
    for i in range(3):
        if i == 1:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss.item()
    return (time.perf_counter() - t0) / 2 / (128 * train_flops_per_image(model) / 1e9)


class Rate:
    """Time left for the rest of a batch at the rate measured so far (work per second of wall time): it holds for
    any --jobs and device, where an estimate made before the batch cannot know what N runs at once gain."""

    def __init__(self, runs: list[RunSpec], cost: Callable[[RunSpec], float]):
        self.cost = {id(r): cost(r) for r in runs}  # each weighed once: a cost builds the model to count FLOPs
        self.left = sum(self.cost.values())
        self.trained = 0.0
        self.t0 = time.perf_counter()

    def done(self, run: RunSpec, status: Status) -> None:
        self.left -= self.cost[id(run)]
        if status != Status.SKIPPED:  # a skipped run took no time and must not speed up the estimate
            self.trained += self.cost[id(run)]

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        if not self.trained or self.left <= 0:
            return f"{elapsed:.0f}s elapsed"
        left = self.left * elapsed / self.trained
        left_text = f"{left:.0f}s" if left < 90 else f"{left / 60:.0f} min" if left < 5400 else f"{left / 3600:.1f} h"
        return f"{elapsed:.0f}s elapsed, ~{left_text} left at the rate so far"
