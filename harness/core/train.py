"""The iteration-based training loop of He et al. §4.2, resumable from a checkpoint to the bit.

Everything a step needs is on the device: data, augmentation randomness, loss and error accumulators.
The host reads the device only at evaluation points (and, during the paper's ResNet-110 warm-up, every
few iterations to check the training error), so the step never waits on a sync.

Decisions (plateau lr drops, early stopping, the warm-up's end) read training or validation numbers only;
they live in harness.core.schedule, so this module is the loop and the small pieces it is made of. The test set
is evaluated at evaluation points for the curves of the paper's Fig. 6, and the reported test error is the
one at the last iteration. A spec without a validation split (Table 6's, on all 50k training images) has
training and test numbers only, and no decision that reads validation (the spec refuses those). Checkpoints,
and what happens when one is damaged, are harness.core.checkpoint; the meter and the bar, harness.core.meter.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.core.checkpoint import LoopState, load_checkpoint, prev_path, restore, save_checkpoint
from harness.core.data import DeviceData, normalize, train_batch
from harness.core.meter import Meter, Progress
from harness.core.models import build_model
from harness.core.result import Result
from harness.core.schedule import WARMUP_CHECK_EVERY, Schedule, eval_every
from harness.core.spec import RunSpec, Spec
from harness.core.stop import held
from harness.errors import DataError


def param_dtype(spec: Spec) -> torch.dtype:
    """Weights, inputs, mean and loss: float64 for the seed-log setup, else float32 (bf16 is autocast, not
    storage: its logits go to float32 for the loss)."""
    return torch.float64 if spec.dtype == "float64" else torch.float32


def make_optimizer(model: torch.nn.Module, spec: Spec, device: torch.device) -> torch.optim.Optimizer:
    """The spec's optimizer in its multi-tensor form: fused kernels on CUDA, foreach on CPU (fused is CUDA's), so
    a step updates all parameters in a handful of kernels. `bench` times the same optimizer through this."""
    o = spec.optimizer
    fast = {"foreach": True} if device.type == "cpu" else {"fused": True}
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov, **fast)
    # Adam's weight_decay is L2 added to the gradient, as in the seed log's torch.optim.Adam.
    return torch.optim.Adam(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, **fast)


def autocast_for(spec: Spec, device: torch.device):
    """bf16 is autocast around the forward (weights, optimizer state and loss stay float32)."""
    if spec.dtype == "bfloat16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def compile_mode(spec: Spec) -> str | None:
    return None if spec.compile is False else ("default" if spec.compile is True else spec.compile)


Step = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer, spec: Spec, device: torch.device) -> Step:
    """One SGD step as (images, labels, lr) -> (loss, wrong), both still on the device; the images are put
    in the model's memory format here.

    Forward, loss and error count are one compiled region, so its backward is one compiled graph too; under
    "reduce-overhead" / "max-autotune" on CUDA both are replayed as CUDA graphs (the launch cost of ~100 small
    kernels is what bounds a batch-128 ResNet step on a GPU). The optimizer is the fused (CUDA) or foreach
    (CPU) SGD: a handful of kernels for all parameters. Nothing here reads a value back to the host.
    """
    autocast, loss_dtype = autocast_for(spec, device), param_dtype(spec)

    def forward_loss(x, y):
        with autocast():
            logits = model(x)
        return F.cross_entropy(logits.to(loss_dtype), y), (logits.argmax(1) != y).sum()

    mode = compile_mode(spec)
    fwd = torch.compile(forward_loss, mode=mode) if mode else forward_loss
    graphed = device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # static shapes: pick the fastest convolution once

    def step(x, y, lr):
        if spec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for g in opt.param_groups:
            g["lr"] = lr
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        loss, wrong = fwd(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if graphed:  # graph outputs are overwritten by the next replay; the caller accumulates them later
            return loss.detach().clone(), wrong.clone()
        return loss.detach(), wrong

    return step


@torch.inference_mode()
def evaluate(model, x_uint8, y, mean, dtype, autocast, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, error %) over a whole split, in large batches."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=y.device, dtype=torch.float64)
    wrong = torch.zeros((), device=y.device, dtype=torch.int64)
    for i in range(0, len(y), batch_size):
        xb = normalize(x_uint8[i:i + batch_size], mean, dtype)
        with autocast():
            logits = model(xb)
        loss += F.cross_entropy(logits.to(dtype), y[i:i + batch_size], reduction="sum").double()
        wrong += (logits.argmax(1) != y[i:i + batch_size]).sum()
    model.train(was_training)
    n = max(len(y), 1)
    return loss.item() / n, 100.0 * wrong.item() / n


def measure(model, data: DeviceData, spec: Spec, device: torch.device, splits: tuple[str, ...]) -> dict[str, float]:
    """`<split>_loss` and `<split>_error` of each named split ("val", "test"), the names the metrics are logged
    under."""
    out: dict[str, float] = {}
    for split in splits:
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        out[f"{split}_loss"], out[f"{split}_error"] = evaluate(model, x, y, data.eval_mean, param_dtype(spec),
                                                               autocast_for(spec, device))
    return out


def next_batch(st: LoopState, data: DeviceData, spec: Spec, gen: torch.Generator):
    """The batch of iteration st.it: the next slice of the current permutation of the training split, a new
    permutation when too few images are left in it. It is the one call every iteration makes, so wrapping it stops
    a run at a chosen iteration."""
    n, bs = len(data.y_train), spec.batch_size
    if st.perm is None or st.pos + bs > n:
        st.perm, st.pos = torch.randperm(n, device=data.y_train.device, generator=gen), 0
    idx = st.perm[st.pos:st.pos + bs]
    st.pos += bs
    return train_batch(data, idx, spec.data.augment, gen)


def fresh_model(run: RunSpec, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The run's initial weights (seeded by the run's seed alone) in its dtype and memory format, and their
    optimizer."""
    spec = run.spec
    torch.manual_seed(run.seed)
    model = build_model(spec.model).to(device=device, dtype=param_dtype(spec))
    model = model.to(memory_format=torch.channels_last if spec.channels_last else torch.contiguous_format)
    return model, make_optimizer(model, spec, device)


EvalHook = Callable[[int, dict[str, float]], bool]  # (iteration, metrics) -> stop now?


def _start(run: RunSpec, device: torch.device, checkpoint: Path | None, every: int,
           on_restart: Callable[[str], None] | None):
    """Weights, optimizer, schedule and data RNG of a fresh run, put back where the checkpoint left them: X.pt, its
    predecessor where it is damaged, or iteration 0 where neither loads (harness.core.checkpoint.restore says which)."""

    def fresh():
        model, opt = fresh_model(run, device)
        gen = torch.Generator(device=device)
        gen.manual_seed(run.seed)
        return model, opt, Schedule(run.spec.schedule, run.spec.optimizer.lr, every), gen

    model, opt, sched, gen = fresh()
    st = restore(checkpoint, lambda p: load_checkpoint(p, model, opt, sched, gen), on_restart) if checkpoint \
        else LoopState()
    if st is None:  # a file that failed half-way through loading may have left part of its state behind
        (model, opt, sched, gen), st = fresh(), LoopState()
    return model, opt, sched, gen, st


def warmup_line(run: RunSpec, sched: Schedule) -> str:
    """How the ResNet-110 warm-up ended: by the paper's rule, or by the safety cap (which the paper does not have)."""
    w, it = run.spec.schedule.warmup, sched.warmup_ended_at
    if sched.warmup_ended_by == "cap":
        return (f"{run.run_name}: warm-up (lr {w.lr:g}) ended by its cap warmup.max_iters={w.max_iters} at iteration "
                f"{it}: the training error was not yet below {w.until_train_error:g}%")
    return (f"{run.run_name}: warm-up (lr {w.lr:g}) ended at iteration {it}: training error below "
            f"{w.until_train_error:g}%")


class Trainee:
    """One run in training: its weights, optimizer, schedule, data RNG, place in the data, meter and bar, and what
    happens around a step (the batch and lr before it; the meter, warm-up checks, evaluation points, decisions and
    checkpoints after it). `train` steps one; harness.core.grouped steps several at once through these same methods,
    so a run in a group takes the decisions, evaluations and checkpoints it takes alone."""

    def __init__(self, run: RunSpec, data: DeviceData, device: torch.device, checkpoint: Path | None = None,
                 on_eval: EvalHook | None = None, progress: bool = True, evaluate_test: bool = True,
                 on_restart: Callable[[str], None] | None = None):
        spec = run.spec
        if spec.batch_size > len(data.y_train):
            raise DataError(f"batch_size: expected at most the {len(data.y_train)} training images of this split, "
                            f"got {spec.batch_size}")
        self.run, self.data, self.device, self.checkpoint, self.on_eval = run, data, device, checkpoint, on_eval
        self.every = eval_every(spec.schedule.total_iters, spec.eval_points)
        self.model, self.opt, self.sched, self.gen, self.st = _start(run, device, checkpoint, self.every, on_restart)
        self.has_val = int(len(data.y_val) > 0)
        self.splits = ("val",) * self.has_val + ("test",) * evaluate_test
        self.meter = Meter(device, spec.batch_size)
        self.bar = Progress(run.run_name, spec.schedule.total_iters, self.st.it, progress)
        self.last: dict[str, float] = {}
        self.stopped_at: int | None = None
        self.ended = self.st.it >= spec.schedule.total_iters  # killed after its final checkpoint: weights are final
        self.model.train()

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, float, bool]:
        """(images, labels, lr, warming) of the next iteration."""
        x, y = next_batch(self.st, self.data, self.run.spec, self.gen)
        return x, y, self.sched.lr_at(self.st.it), self.sched.warming(self.st.it)

    def after_step(self, loss: torch.Tensor, wrong: torch.Tensor, lr: float, warming: bool) -> bool:
        """Counts the step; at an evaluation point measures, decides, reports and checkpoints. Returns whether the
        run has ended (its last iteration, or stopped early); raises Diverged where the loss is not finite."""
        st, sched, meter = self.st, self.sched, self.meter
        meter.add(loss, wrong, warming)
        st.it += 1
        self.bar.tick()
        if warming and st.it % WARMUP_CHECK_EVERY == 0:
            sched.observe_train_error(meter.window_error(st.it))
        if warming and sched.warmup_ended(st.it):
            self.bar.write(warmup_line(self.run, sched))
        total = self.run.spec.schedule.total_iters
        if st.it % self.every and st.it != total:
            return False
        train_loss, elapsed = meter.read(st.it)
        st.train_seconds += elapsed
        self.bar.evaluating()
        last = {"train_loss": train_loss, "train_error": meter.train_error(),
                **measure(self.model, self.data, self.run.spec, self.device, self.splits), "lr": lr,
                "images_per_s": meter.seen / elapsed}
        stop = self.has_val and sched.observe_eval(st.it, last["val_loss"], warming)
        self.bar.show(last)
        with held():
            if self.on_eval is not None and self.on_eval(st.it, last):
                stop = True
            if self.checkpoint:
                save_checkpoint(self.checkpoint, self.model, self.opt, sched, self.gen, st)
        meter.reset()
        self.last, self.ended, self.stopped_at = last, bool(stop) or st.it >= total, st.it if stop else None
        return self.ended

    def result(self) -> Result:
        """The last evaluation with the run's totals; the checkpoint before the last one is gone (the last one stays
        until the caller has recorded the run)."""
        self.bar.close()
        last = dict(self.last) or measure(self.model, self.data, self.run.spec, self.device, self.splits)
        if self.checkpoint:
            prev_path(self.checkpoint).unlink(missing_ok=True)
        return Result(last, self.st.it, self.st.train_seconds, self.stopped_at, self.sched.warmup_ended_by,
                      self.sched.warmup_ended_at)


def train(run: RunSpec, data: DeviceData, device: torch.device, checkpoint: Path | None = None,
          on_eval: EvalHook | None = None, progress: bool = True, evaluate_test: bool = True,
          on_restart: Callable[[str], None] | None = None) -> tuple[Result, torch.nn.Module]:
    """Train one run; resumes from `checkpoint` if it exists (`on_restart` hears of a damaged one: the line saying
    where the run went on from instead). Returns the last evaluation and the model. Without a validation split,
    evaluation points measure training and test numbers only; with `evaluate_test` false, no test numbers."""
    t = Trainee(run, data, device, checkpoint, on_eval, progress, evaluate_test, on_restart)
    step = make_step(t.model, t.opt, run.spec, device)
    while not t.ended:
        x, y, lr, warming = t.batch()
        loss, wrong = step(x, y, lr)
        t.after_step(loss, wrong, lr, warming)
    return t.result(), t.model
