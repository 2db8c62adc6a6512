"""Grouped training: several runs that share a model shape advance together, one batched kernel per layer.

A batch-128 CIFAR ResNet step is a hundred tiny kernels; on a GPU each fills a few percent of the device and the
step is bound by launches, not arithmetic. Here K runs ("members") take their steps as one: their weights are
stacked and the forward is `torch.func.vmap` over `functional_call`, whose batching rules turn each convolution into
one grouped convolution (BatchNorm stays per member and per channel, as grouped convolutions keep channels apart),
so a kernel carries K runs. The stacking happens inside autograd (`torch.stack` of each member's own parameters), so
every member is a harness.core.train.Trainee, as one run is: its own nn.Module, optimizer (any optimizer, lr and
weight decay), Schedule (multistep, cosine, plateau, the ResNet-110 warm-up, early stopping: all act per member),
torch.Generator (data order and augmentation draws), place in the data, meter, evaluation points and checkpoint.
This module adds only the step that carries the members together and the loop around it. BatchNorm's running
statistics are updated on the stacked copy and written back to each member.

Why vmap rather than the alternatives: grouped convolutions by hand would rewrite the model; one CUDA graph per run
on separate streams keeps one kernel per run (it hides launch latency but does not fill the device) and exists on
CUDA only. vmap keeps harness.core.models as it is and runs on CPU too. A CPU core is already busy with one run's
convolutions, so grouping gains nothing there and the CPU's default group size is 1 (figures: docs/benchmark.md); on
a GPU the lever is the launch-bound step. `bench --group K` measures it and DEFAULT_GROUP records the choice per
device type.

Members must agree on what shapes the kernels (group_key): model, batch size, dtype, channels_last and compile.
Everything else may differ: seed, optimizer, schedule, data options, eval_points, total iterations. A member that
diverges leaves the group as FAILED at its next evaluation point (NaN stays within its own slice of every batched
kernel); one that finishes or stops early leaves it and the others go on with a smaller group.

Each member's numbers are those it has alone: the same initial weights, batches, augmentation and lr; the grouped
convolution adds its terms in another order than the single one. float64 trajectories agree to rounding over a
short run. float32 ones differ by rounding at the first step, which the recipe amplifies as it does any
rounding difference: a member ends as far from its run alone as that run ends from itself on another thread count
(docs/benchmark.md, "Several runs in one step"). compile applies torch.compile to the vmapped forward (CUDA graphs under
"reduce-overhead", as train.make_step). bf16 runs are not grouped (groupable: autocast does not act inside vmap).
channels_last members train as alone, but vmap runs adaptive_avg_pool2d on their channels_last batch through its
slow per-member fallback.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from harness.core.meter import Diverged
from harness.core.result import Result
from harness.core.spec import RunSpec
from harness.core.train import Trainee, autocast_for, compile_mode, make_step, param_dtype

# The group size `run`/`table` use without --group, per device type: the K that `bench --group K` finds fastest
# (docs/benchmark.md); CUDA stays at 1 until GPU rows show a K that wins (the command: docs/gpu.md).
DEFAULT_GROUP = {"cpu": 1, "cuda": 1}


def default_group(device: torch.device) -> int:
    return DEFAULT_GROUP.get(device.type, 1)


def group_key(run: RunSpec) -> str:
    """What must be equal for runs to share a step: what shapes the batched kernels and how they are built."""
    s = run.spec
    return f"{s.model.model_dump_json()}|{s.batch_size}|{s.dtype}|{s.channels_last}|{s.compile}"


def groupable(run: RunSpec) -> bool:
    """bf16 runs train alone: autocast does not reach inside vmap (pytorch/pytorch#192617; here a bf16 group's
    convolutions come out float32 and its losses follow float32's, not those of the bf16 runs alone), so a bf16
    member would not train as it does alone."""
    return run.spec.dtype != "bfloat16"


def partition(runs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    """Runs in groups of at most `size` that share a group_key (one run a group where not groupable), in the order
    the runs first appear."""
    by_key: dict[str, list[RunSpec]] = {}
    for r in runs:
        by_key.setdefault(group_key(r), []).append(r)
    sized = [(rs, max(size, 1) if groupable(rs[0]) else 1) for rs in by_key.values()]
    return [rs[i:i + k] for rs, k in sized for i in range(0, len(rs), k)]


EndHook = Callable[[Trainee, "Result | Exception"], None]  # (member, its result or the failure)
GroupStep = Callable[[list[torch.Tensor], list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def make_group_step(members: list[Trainee], device: torch.device) -> GroupStep:
    """One step of every member: (images, labels per member) -> (loss, wrong), each of shape (K,), on the device.

    The members' optimizers must hold this step's lr already. The loss that is backpropagated is the sum of the
    members' losses: its gradient with respect to each member's weights is that member's own gradient. The loss
    is taken in the run's dtype, as train.make_step takes it."""
    spec = members[0].run.spec
    if len(members) > 1 and not groupable(members[0].run):
        raise ValueError(f"{spec.dtype} runs are not grouped (harness.core.grouped.groupable)")
    base = members[0].model
    pnames = [n for n, _ in base.named_parameters()]
    bnames = [n for n, _ in base.named_buffers()]
    autocast, loss_dtype = autocast_for(spec, device), param_dtype(spec)

    def forward_loss(params, buffers, x, y):
        with autocast():
            logits = functional_call(base, (params, buffers), (x,))
        return F.cross_entropy(logits.to(loss_dtype), y), (logits.argmax(1) != y).sum()

    mode = compile_mode(spec)
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


def _alone(m: Trainee, device: torch.device) -> GroupStep:
    """A group of one steps as a run alone steps (train.make_step, no vmap): the same kernels and numbers as
    train.train, so a run that trains alone through the group's loop is the run `train` trains."""
    step = make_step(m.model, m.opt, m.run.spec, device)

    def one(xs, ys):
        loss, wrong = step(xs[0], ys[0], m.opt.param_groups[0]["lr"])
        return loss.unsqueeze(0), wrong.unsqueeze(0)

    return one


def _advance(members: list[Trainee], step: GroupStep, on_end: EndHook) -> list[Trainee]:
    """One iteration of every member; returns those still training (a member that finished, stopped early or
    diverged has been handed to `on_end`)."""
    batches = [m.batch() for m in members]
    for m, (_, _, lr, _) in zip(members, batches, strict=True):
        for g in m.opt.param_groups:
            g["lr"] = lr
    loss, wrong = step([b[0] for b in batches], [b[1] for b in batches])
    going = []
    for k, (m, (_, _, lr, warming)) in enumerate(zip(members, batches, strict=True)):
        try:
            if m.after_step(loss[k], wrong[k], lr, warming):
                on_end(m, m.result())
                continue
        except Diverged as e:
            on_end(m, e)
            continue
        going.append(m)
    return going


def train_group(members: list[Trainee], device: torch.device, on_end: EndHook) -> None:
    """Train the members (each made as for train.train, its checkpoint restored) together until each has finished,
    stopped early or diverged; `on_end` gets each member with its final metrics (as train.train returns them) or
    its exception, the moment it leaves the group. Each time the group shrinks, the step is built anew; a group of
    one steps as a run alone."""
    going = []
    for m in members:
        if m.ended:  # killed after its final checkpoint: its weights are final
            on_end(m, m.result())
        else:
            going.append(m)
    while going:
        step = make_group_step(going, device) if len(going) > 1 else _alone(going[0], device)
        size = len(going)
        while len(going) == size:
            going = _advance(going, step, on_end)
