"""The timed loop of `bench --group K`: K runs trained together by harness.core.grouped's step, as `run --group K` does.

Each member is a run of its own (seed k, own generator and data order) on the same device-resident images as
`ours`, so a group row differs from K rows of `ours` in one thing: K runs share each kernel.
"""

from __future__ import annotations

import time

import torch

from harness.core import grouped as group
from harness.core.data import DeviceData
from harness.core.devices import sync
from harness.core.spec import ModelSpec, RunSpec, Spec
from harness.core.train import Trainee, next_batch


def bench_group(data: DeviceData, net: ModelSpec, bs: int, iters: int, warmup: int, device: torch.device,
                runs: int, **fast) -> tuple[float, float]:
    """(warm-up s, timed s) of warmup + iters steps of `runs` members trained together at lr 0.1; `fast` holds Spec
    fields, as for timing.bench_ours (compile="reduce-overhead": the group's step under CUDA graphs)."""
    spec = Spec(model=net, batch_size=bs, **fast)
    members = [Trainee(RunSpec(spec=spec, group="bench", name="bench", seed=k, budget=1.0, source_file="-"),
                       data, device, progress=False) for k in range(runs)]
    for m in members:
        for g in m.opt.param_groups:
            g["lr"] = 0.1
    step = group.make_group_step(members, device)
    loss_sum = torch.zeros((), device=device)
    start = t0 = time.perf_counter()
    for i in range(warmup + iters):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        batches = [next_batch(m.st, m.data, spec, m.gen) for m in members]
        loss, _ = step([x for x, _ in batches], [y for _, y in batches])
        loss_sum += loss.sum()
    sync(device)
    if not torch.isfinite(loss_sum):
        raise RuntimeError(f"bench: the loss is not finite for a group of {runs}")
    return t0 - start, time.perf_counter() - t0
