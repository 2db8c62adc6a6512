"""The iteration-based training loop of He et al. §4.2, resumable from a checkpoint to the bit.

Everything a step needs is on the device: data, augmentation randomness, loss and error accumulators.
The host reads the device only at evaluation points (and, during the paper's ResNet-110 warm-up, every
few iterations to check the training error), so the step never waits on a sync.

Decisions (plateau lr drops, early stopping, the warm-up's end) read training or validation numbers only;
they live in harness.schedule, so this module is the loop and the small pieces it is made of. The test set
is evaluated at evaluation points for the curves of the paper's Fig. 6, and the reported test error is the
one at the last iteration.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.data import DeviceData, normalize, train_batch
from harness.errors import DataError
from harness.models import build_model
from harness.schedule import WARMUP_CHECK_EVERY, Schedule, eval_every
from harness.spec import RunSpec, Spec


class Diverged(RuntimeError):
    """The loss became NaN or inf: the run ends as FAILED with tag failure=diverged."""


def param_dtype(spec: Spec) -> torch.dtype:
    """Weights and inputs: float64 for the seed-log ablation, else float32 (bf16 is autocast, not storage)."""
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
    autocast = autocast_for(spec, device)

    def forward_loss(x, y):
        with autocast():
            logits = model(x)
        return F.cross_entropy(logits.float(), y), (logits.argmax(1) != y).sum()

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
        loss += F.cross_entropy(logits.float(), y[i:i + batch_size], reduction="sum").double()
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


class Meter:
    """Training loss and error summed on the device between evaluation points, and the wrong answers of the
    current warm-up window: a step adds to them without a host sync, the host reads them at evaluation points
    and at warm-up checks only."""

    def __init__(self, device: torch.device, batch_size: int):
        self.bs = batch_size
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.wrong = torch.zeros((), device=device, dtype=torch.int64)
        self.window = torch.zeros((), device=device, dtype=torch.int64)
        self.reset()

    def reset(self) -> None:
        self.loss.zero_()
        self.wrong.zero_()
        self.seen = 0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, wrong: torch.Tensor, warming: bool) -> None:
        self.loss += loss.double()
        self.wrong += wrong
        self.seen += self.bs
        if warming:
            self.window += wrong

    def window_error(self, it: int) -> float:
        """The training error (%) of the warm-up window ending at iteration `it`; starts the next window."""
        err = 100.0 * self.window.item() / (WARMUP_CHECK_EVERY * self.bs)
        self.window.zero_()
        if not math.isfinite(self.loss.item()):
            raise Diverged(f"loss is not finite at iteration {it} (during warm-up)")
        return err

    def read(self, it: int) -> tuple[float, float]:
        """(mean training loss since the last evaluation point, seconds of training since then)."""
        train_loss = self.loss.item() / max(self.seen // self.bs, 1)
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss is {train_loss} at iteration {it}: the run diverged")
        return train_loss, time.perf_counter() - self.t0

    def train_error(self) -> float:
        """Training error (%) since the last evaluation point."""
        return 100.0 * self.wrong.item() / max(self.seen, 1)


class Progress:
    """The run's tqdm bar: a tick per iteration, and the latest numbers as its postfix at evaluation points."""

    def __init__(self, run_name: str, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, desc=run_name, unit="it", disable=not enabled,
                        dynamic_ncols=True, leave=False)

    def tick(self) -> None:
        self.bar.update(1)

    def show(self, m: dict[str, float]) -> None:
        self.bar.set_postfix(loss=f"{m['train_loss']:.3f}", lr=f"{m['lr']:.3g}", val_err=f"{m['val_error']:.1f}",
                             img_s=f"{m['images_per_s']:.0f}")

    def close(self) -> None:
        self.bar.close()


@dataclass
class LoopState:
    """Where the loop is in the data: with the weights, the schedule and the RNGs, what a bit-exact resume needs."""

    it: int = 0
    perm: torch.Tensor | None = None
    pos: int = 0
    train_seconds: float = 0.0


def save_checkpoint(path: Path, model, opt, sched: Schedule, gen: torch.Generator, st: LoopState) -> None:
    """Weights, optimizer, schedule, both RNGs and the loop's place: all that the next iteration depends on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": sched.state_dict(),
                "generator": gen.get_state(), "cpu_rng": torch.get_rng_state(), "loop": st.__dict__}, tmp)
    os.replace(tmp, path)  # atomic: a kill leaves the old checkpoint or the new one, never half of one


LEGACY_LOOP_KEYS = ("warmup_done", "plateau_lr", "best_val_loss", "best_val_iter")


def _schedule_state(ck: dict) -> dict:
    """The schedule's state; a checkpoint written before the Schedule object kept it in the loop's dict and in
    torch's ReduceLROnPlateau, and a run killed then still resumes."""
    if "schedule" in ck:
        return ck["schedule"]
    plateau = ck.get("plateau") or {}
    state = {k: ck["loop"].pop(k) for k in LEGACY_LOOP_KEYS}
    state.update(plateau_best=plateau.get("best", math.inf), plateau_bad=plateau.get("num_bad_epochs", 0))
    return state


def load_checkpoint(path: Path, model, opt, sched: Schedule, gen: torch.Generator) -> LoopState:
    """Puts model, optimizer, schedule and RNGs back as save_checkpoint found them; returns the loop's place."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(_schedule_state(ck))
    gen.set_state(ck["generator"])
    torch.set_rng_state(ck["cpu_rng"])
    st = LoopState(**ck["loop"])
    if st.perm is not None:
        st.perm = st.perm.to(gen.device)
    return st


def next_batch(st: LoopState, data: DeviceData, spec: Spec, gen: torch.Generator):
    """The batch of iteration st.it: the next slice of the current permutation of the training split, a new
    permutation when too few images are left in it. Also the one call of every iteration that the tests'
    fault injection (tests/faults) wraps to kill a run at a chosen iteration."""
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


def train(run: RunSpec, data: DeviceData, device: torch.device, checkpoint: Path | None = None,
          on_eval: EvalHook | None = None, progress: bool = True,
          evaluate_test: bool = True) -> tuple[dict[str, float], torch.nn.Module]:
    """Train one run; resumes from `checkpoint` if it exists. Returns the last evaluation and the model."""
    spec, s = run.spec, run.spec.schedule
    if spec.batch_size > len(data.y_train):
        raise DataError(f"batch_size: expected at most the {len(data.y_train)} training images of this split, "
                        f"got {spec.batch_size}")
    model, opt = fresh_model(run, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(run.seed)
    every = eval_every(s.total_iters, spec.eval_points)
    sched, st = Schedule(s, spec.optimizer.lr, every), LoopState()
    if checkpoint and checkpoint.exists():
        st = load_checkpoint(checkpoint, model, opt, sched, gen)
    splits = ("val", "test") if evaluate_test else ("val",)
    step = make_step(model, opt, spec, device)
    last: dict[str, float] = {}
    model.train()
    bar = Progress(run.run_name, s.total_iters, st.it, progress)
    meter = Meter(device, spec.batch_size)
    while st.it < s.total_iters:
        x, y = next_batch(st, data, spec, gen)
        warming, lr = sched.warming(st.it), sched.lr_at(st.it)
        loss, wrong = step(x, y, lr)
        meter.add(loss, wrong, warming)
        st.it += 1
        bar.tick()
        if warming and st.it % WARMUP_CHECK_EVERY == 0:
            sched.observe_train_error(meter.window_error(st.it))
        if st.it % every and st.it != s.total_iters:
            continue
        train_loss, elapsed = meter.read(st.it)
        st.train_seconds += elapsed
        last = {"train_loss": train_loss, "train_error": meter.train_error(),
                **measure(model, data, spec, device, splits[:1]), "lr": lr, "images_per_s": meter.seen / elapsed}
        last.update(measure(model, data, spec, device, splits[1:]))
        stop = sched.observe_eval(st.it, last["val_loss"], warming)
        bar.show(last)
        if on_eval is not None and on_eval(st.it, last):
            stop = True
        if checkpoint:
            save_checkpoint(checkpoint, model, opt, sched, gen, st)
        meter.reset()
        if stop:
            last["stopped_early_at"] = st.it
            break
    bar.close()
    if not last:  # killed after the final checkpoint: the weights are final, measure them again
        last = measure(model, data, spec, device, splits)
    last["iterations"] = st.it
    last["train_seconds"] = st.train_seconds
    return last, model
