"""Grouped training: several runs that share a model shape advance together, one batched kernel per layer.

A batch-128 CIFAR ResNet step is a hundred tiny kernels; on a GPU each fills a few percent of the device and the
step is bound by launches, not arithmetic. Here K runs ("members") take their steps as one: their weights are
stacked and the forward is `torch.func.vmap` over `functional_call`, whose batching rules turn each convolution
into one grouped convolution (BatchNorm stays per member and per channel, as grouped convolutions keep channels
apart), so a kernel carries K runs. The stacking happens inside autograd (`torch.stack` of each member's own
parameters), so every member keeps its own nn.Module, its own optimizer (any optimizer, lr and weight decay), its
own Schedule (multistep, cosine, plateau, the ResNet-110 warm-up, early stopping: all act per member), its own
torch.Generator (data order and augmentation draws) and its own LoopState, Meter and checkpoint, exactly as
harness.train.train builds them for one run; this module reuses those pieces and adds only the loop that steps
members together. BatchNorm's running statistics are updated on the stacked copy and written back to each member.

Why vmap rather than the alternatives: grouped convolutions by hand would rewrite the model; one CUDA graph per run
on separate streams keeps one kernel per run (it hides launch latency but does not fill the device) and exists on
CUDA only. vmap keeps harness.models as it is and runs on CPU too. Measured on the 2-core development CPU
(docs/benchmark.md, `bench --group 4`): the grouped step is slower than the same runs one after another, since a
CPU core is already busy with one run's convolutions, so the default group size there is 1. On a GPU the lever is
the launch-bound step; `bench --group K` measures it and DEFAULT_GROUP records the choice per device type.

Members must agree on what shapes the kernels (group_key): model, batch size, dtype, channels_last and compile.
Everything else may differ: seed, optimizer, schedule, data options, eval_points, total iterations. A member that
diverges leaves the group as FAILED at its next evaluation point (NaN stays within its own slice of every batched
kernel); one that finishes or stops early leaves it and the others go on with a smaller group.

Each member's numbers are those it has alone: the same initial weights, batches, augmentation and lr; the grouped
convolution adds its terms in another order than the single one, so float32 trajectories agree to rounding (and
drift apart slowly, as any two builds of a kernel do) and float64 ones to ~1e-12 over a short run (tests/test_group).
compile applies torch.compile to the vmapped forward (CUDA graphs under "reduce-overhead", as train.make_step);
bf16 is autocast as for one run; channels_last is not applied to the stacked 5-D batch (a CPU-only bench variant).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from harness import train as T
from harness.data import DeviceData
from harness.errors import DataError
from harness.schedule import WARMUP_CHECK_EVERY, Schedule, eval_every
from harness.spec import RunSpec

# The group size `run`/`table` use without --group, per device type: what `bench --group K` measured fastest.
# CPU: 1 (grouping loses there, docs/benchmark.md). CUDA: 1 until `bench --group 4` rows on a GPU show a K that
# wins; the command that measures it is in docs/gpu.md.
DEFAULT_GROUP = {"cpu": 1, "cuda": 1}


def default_group(device: torch.device) -> int:
    return DEFAULT_GROUP.get(device.type, 1)


def group_key(run: RunSpec) -> str:
    """What must be equal for runs to share a step: what shapes the batched kernels and how they are built."""
    s = run.spec
    return f"{s.model.model_dump_json()}|{s.batch_size}|{s.dtype}|{s.channels_last}|{s.compile}"


def partition(runs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    """Runs in groups of at most `size` that share a group_key, in the order the runs first appear."""
    by_key: dict[str, list[RunSpec]] = {}
    for r in runs:
        by_key.setdefault(group_key(r), []).append(r)
    return [rs[i:i + size] for rs in by_key.values() for i in range(0, len(rs), max(size, 1))]


EndHook = Callable[["Member", "dict[str, float] | Exception"], None]  # (member, final metrics or the failure)


@dataclass
class Member:
    """One run of a group: what harness.train.train keeps for one run, in one object."""

    run: RunSpec
    data: DeviceData
    checkpoint: Path | None
    on_eval: T.EvalHook | None
    model: torch.nn.Module = field(init=False)
    opt: torch.optim.Optimizer = field(init=False)
    gen: torch.Generator = field(init=False)
    sched: Schedule = field(init=False)
    st: T.LoopState = field(init=False)
    meter: T.Meter = field(init=False)
    every: int = field(init=False)
    last: dict = field(default_factory=dict)

    def start(self, device: torch.device) -> None:
        """As train.train starts a run: seeded weights, its generator, schedule, and the checkpoint if any."""
        spec, s = self.run.spec, self.run.spec.schedule
        if spec.batch_size > len(self.data.y_train):
            raise DataError(f"batch_size: expected at most the {len(self.data.y_train)} training images of this "
                            f"split, got {spec.batch_size}")
        self.model, self.opt = T.fresh_model(self.run, device)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(self.run.seed)
        self.every = eval_every(s.total_iters, spec.eval_points)
        self.sched, self.st = Schedule(s, spec.optimizer.lr, self.every), T.LoopState()
        if self.checkpoint and self.checkpoint.exists():
            self.st = T.load_checkpoint(self.checkpoint, self.model, self.opt, self.sched, self.gen)
        self.meter = T.Meter(device, spec.batch_size)
        self.model.train()

    @property
    def done(self) -> bool:
        return self.st.it >= self.run.spec.schedule.total_iters


GroupStep = Callable[[list[torch.Tensor], list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def make_group_step(members: list[Member], device: torch.device) -> GroupStep:
    """One step of every member: (images, labels per member) -> (loss, wrong), each of shape (K,), on the device.

    The members' optimizers must hold this step's lr already. The loss that is backpropagated is the sum of the
    members' losses: its gradient with respect to each member's weights is that member's own gradient."""
    spec = members[0].run.spec
    base = members[0].model
    pnames = [n for n, _ in base.named_parameters()]
    bnames = [n for n, _ in base.named_buffers()]
    autocast = T.autocast_for(spec, device)

    def forward_loss(params, buffers, x, y):
        with autocast():
            logits = functional_call(base, (params, buffers), (x,))
        return F.cross_entropy(logits.float(), y), (logits.argmax(1) != y).sum()

    mode = T.compile_mode(spec)
    fwd = vmap(forward_loss)
    fwd = torch.compile(fwd, mode=mode) if mode else fwd
    graphed = device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")
    own_p = [dict(m.model.named_parameters()) for m in members]
    own_b = [dict(m.model.named_buffers()) for m in members]

    def step(xs, ys):
        params = {n: torch.stack([p[n] for p in own_p]) for n in pnames}
        with torch.no_grad():
            buffers = {n: torch.stack([b[n] for b in own_b]) for n in bnames}
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        loss, wrong = fwd(params, buffers, torch.stack(xs), torch.stack(ys))
        for m in members:
            m.opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        with torch.no_grad():
            for m in members:
                m.opt.step()
            for k, b in enumerate(own_b):  # BatchNorm's running statistics and counters, back to each member
                for n in bnames:
                    b[n].copy_(buffers[n][k])
        return loss.detach().clone(), wrong.clone()

    return step


def _eval_point(m: Member, device: torch.device, lr: float, warming: bool, splits: tuple[str, ...]) -> bool:
    """train.train's evaluation point for one member: its metrics, its schedule's decision, its checkpoint.
    Returns whether the member stops early here; raises train.Diverged when its loss is not finite."""
    st, spec = m.st, m.run.spec
    train_loss, elapsed = m.meter.read(st.it)
    st.train_seconds += elapsed
    last = {"train_loss": train_loss, "train_error": m.meter.train_error(),
            **T.measure(m.model, m.data, spec, device, splits), "lr": lr, "images_per_s": m.meter.seen / elapsed}
    stop = m.sched.observe_eval(st.it, last.get("val_loss", math.nan), warming) if "val_loss" in last else False
    m.last = last
    if m.on_eval is not None and m.on_eval(st.it, last):
        stop = True
    if m.checkpoint:
        T.save_checkpoint(m.checkpoint, m.model, m.opt, m.sched, m.gen, st)
    m.meter.reset()
    if stop:
        last["stopped_early_at"] = st.it
    return stop


def _finish(m: Member, device: torch.device, splits: tuple[str, ...]) -> dict[str, float]:
    last = m.last or T.measure(m.model, m.data, m.run.spec, device, splits)  # killed after the final checkpoint
    last["iterations"] = m.st.it
    last["train_seconds"] = m.st.train_seconds
    return last


def _advance(members: list[Member], step: GroupStep, device: torch.device, splits: tuple[str, ...],
             on_end: EndHook) -> list[Member]:
    """One iteration of every member; returns those still training (a member that finished, stopped early or
    diverged has been handed to `on_end`)."""
    xs, ys, lrs, warm = [], [], [], []
    for m in members:
        x, y = T.next_batch(m.st, m.data, m.run.spec, m.gen)
        warming, lr = m.sched.warming(m.st.it), m.sched.lr_at(m.st.it)
        for g in m.opt.param_groups:
            g["lr"] = lr
        xs.append(x)
        ys.append(y)
        lrs.append(lr)
        warm.append(warming)
    loss, wrong = step(xs, ys)
    going = []
    for k, m in enumerate(members):
        m.meter.add(loss[k], wrong[k], warm[k])
        m.st.it += 1
        try:
            if warm[k] and m.st.it % WARMUP_CHECK_EVERY == 0:
                m.sched.observe_train_error(m.meter.window_error(m.st.it))
            at_eval = m.st.it % m.every == 0 or m.done
            if at_eval and _eval_point(m, device, lrs[k], warm[k], splits) or m.done:
                on_end(m, _finish(m, device, splits))
                continue
        except T.Diverged as e:
            on_end(m, e)
            continue
        going.append(m)
    return going


def train_group(members: list[Member], device: torch.device, on_end: EndHook, evaluate_test: bool = True) -> None:
    """Train the members together until each has finished, stopped early or diverged; `on_end` gets each member
    with its final metrics (as train.train returns them) or its exception, the moment it leaves the group."""
    splits = ("val", "test") if evaluate_test else ("val",)
    going = []
    for m in members:
        try:
            m.start(device)
        except DataError as e:
            on_end(m, e)
            continue
        if m.done:  # killed after its final checkpoint: its weights are final
            on_end(m, _finish(m, device, splits))
        else:
            going.append(m)
    while going:
        step = make_group_step(going, device)
        size = len(going)
        while len(going) == size:
            going = _advance(going, step, device, splits, on_end)
