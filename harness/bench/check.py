"""`check-group`: a group of K runs against each of them alone, seed-matched, under compile (and CUDA graphs on CUDA).

The grouped step (harness.core.grouped) is tested eager on the CPU; under torch.compile and CUDA graphs its batched
kernels and the BatchNorm running statistics written back from the stacked copy are other code, and a wrong running
statistic shows only in the test error at the end of a campaign. This command trains the same K runs (seeds 0..K-1)
both ways for a few hundred iterations and compares, per member, every step's training loss, the final weights,
the BN running statistics and the validation loss in eval mode (which reads those statistics). It runs in float64
where the device has it (not MPS) so that rounding stays far below what a wrong kernel or statistic gives, and at a
small lr (0.01 by default) so that the recipe's amplification of rounding does not hide either. It trains and
records nothing: no MLflow, no checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from harness.core import grouped as group
from harness.core.data import load_arrays, to_device
from harness.core.devices import device_name, pick_device
from harness.core.spec import DataSpec, ModelSpec, OptimizerSpec, RunSpec, ScheduleSpec, Spec
from harness.core.train import Trainee, make_step, measure, param_dtype

# What a member may differ from its run alone by, per dtype: rounding of the grouped kernels' other summation order.
TOLERANCE = {"float64": 1e-6, "float32": 1e-2}


@dataclass(frozen=True)
class GroupCheck:
    data: str
    k: int = 4
    iters: int = 300
    depth: int = 20
    batch_size: int = 128
    lr: float = 0.01
    dtype: str | None = None  # None: float64, or float32 on a device without float64 (MPS)
    compile: str | None = None  # None: reduce-overhead (CUDA graphs) on CUDA, default elsewhere; eager: none
    device: str | None = None
    download: bool = False


def check_spec(c: GroupCheck, device: torch.device) -> Spec:
    dtype = c.dtype or ("float32" if device.type == "mps" else "float64")
    mode = c.compile or ("reduce-overhead" if device.type == "cuda" else "default")
    mode = False if mode == "eager" else mode
    return Spec(model=ModelSpec(depth=c.depth), optimizer=OptimizerSpec(lr=c.lr),
                schedule=ScheduleSpec(total_iters=c.iters, milestones=[]), data=DataSpec(val_fraction=0.1),
                batch_size=c.batch_size, seeds=list(range(c.k)), dtype=dtype, compile=mode, eval_points=1)


def _alone(run: RunSpec, data, device) -> tuple[torch.Tensor, Trainee]:
    t = Trainee(run, data, device, progress=False)
    step = make_step(t.model, t.opt, run.spec, device)
    losses = []
    for _ in range(run.spec.schedule.total_iters):
        x, y, lr, _ = t.batch()
        losses.append(step(x, y, lr)[0])
        t.st.it += 1
    return torch.stack(losses), t


def _together(runs: list[RunSpec], data, device) -> tuple[torch.Tensor, list[Trainee]]:
    members = [Trainee(r, data, device, progress=False) for r in runs]
    step = group.make_group_step(members, device)
    losses = []
    for _ in range(runs[0].spec.schedule.total_iters):
        batches = [m.batch() for m in members]
        for m, (_, _, lr, _) in zip(members, batches, strict=True):
            for g in m.opt.param_groups:
                g["lr"] = lr
        losses.append(step([b[0] for b in batches], [b[1] for b in batches])[0])
        for m in members:
            m.st.it += 1
    return torch.stack(losses), members


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(((a[n].double() - b[n].double()).abs().max().item() for n in a), default=0.0)


def compare(member: Trainee, alone: Trainee, member_losses: torch.Tensor, alone_losses: torch.Tensor,
            device) -> dict[str, float]:
    """The largest differences between a member and its run alone: per-step loss, weights, BN running statistics
    (and counters), and the validation loss and error in eval mode."""
    params = dict(member.model.named_parameters()), dict(alone.model.named_parameters())
    buffers = dict(member.model.named_buffers()), dict(alone.model.named_buffers())
    spec = member.run.spec
    ev = [measure(t.model, t.data, spec, device, ("val",)) for t in (member, alone)]
    return {"loss": (member_losses - alone_losses).abs().max().item(), "weights": _max_diff(*params),
            "bn_stats": _max_diff(*buffers), "val_loss": abs(ev[0]["val_loss"] - ev[1]["val_loss"]),
            "val_error": abs(ev[0]["val_error"] - ev[1]["val_error"])}


def check_group(c: GroupCheck) -> int:
    """Trains the K runs grouped and alone, prints one line per member and a verdict; 0 when every member is within
    TOLERANCE of its run alone (and the val error equal), 1 otherwise."""
    device = pick_device(c.device)
    spec = check_spec(c, device)
    data = to_device(load_arrays(c.data, c.download), spec.data, device, param_dtype(spec))
    runs = [RunSpec(spec=spec, group="check", name="check", seed=s, budget=1.0, source_file="-") for s in spec.seeds]
    grouped_losses, members = _together(runs, data, device)
    tol, ok = TOLERANCE[spec.dtype], True
    print(f"check-group: K={c.k} ResNet-{c.depth}, batch {c.batch_size}, {c.iters} iterations at lr {c.lr:g}, "
          f"{spec.dtype}, compile={spec.compile}, on {device_name(device)}, {data.description}", file=sys.stderr)
    for k, run in enumerate(runs):
        alone_losses, alone = _alone(run, data, device)
        d = compare(members[k], alone, grouped_losses[:, k], alone_losses, device)
        good = max(d["loss"], d["weights"], d["bn_stats"], d["val_loss"]) <= tol and d["val_error"] == 0
        ok &= good
        print(f"check-group: seed {run.seed}: max |group - alone| loss {d['loss']:.2e}, weights {d['weights']:.2e}, "
              f"BN statistics {d['bn_stats']:.2e}, val loss {d['val_loss']:.2e}, val error {d['val_error']:.2f} "
              f"points: {'ok' if good else 'DIFFERS'}", file=sys.stderr)
    print(f"check-group: {'PASS' if ok else 'FAIL'} (tolerance {tol:g} in {spec.dtype})", file=sys.stderr)
    return 0 if ok else 1
