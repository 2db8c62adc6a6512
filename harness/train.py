"""The iteration-based training loop of He et al. §4.2, resumable from a checkpoint to the bit.

Everything a step needs is on the device: data, augmentation randomness, loss and error accumulators.
The host reads the device only at evaluation points (and, during the paper's ResNet-110 warm-up, every
few iterations to check the training error), so the step never waits on a sync.

Decisions (plateau lr drops, early stopping, the warm-up's end) read training or validation numbers only.
The test set is evaluated at evaluation points for the curves of the paper's Fig. 6, and the reported
test error is the one at the last iteration.
"""

from __future__ import annotations

import math
import os
import signal
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
from harness.spec import RunSpec, ScheduleSpec, Spec

WARMUP_CHECK_EVERY = 20


class Diverged(RuntimeError):
    """The loss became NaN or inf: the run ends as FAILED with tag failure=diverged."""


def param_dtype(spec: Spec) -> torch.dtype:
    """Weights and inputs: float64 for the seed-log ablation, else float32 (bf16 is autocast, not storage)."""
    return torch.float64 if spec.dtype == "float64" else torch.float32


def make_optimizer(model: torch.nn.Module, spec: Spec, device: torch.device) -> torch.optim.Optimizer:
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


def scheduled_lr(s: ScheduleSpec, base_lr: float, it: int) -> float:
    """The lr at iteration `it` for the iteration-indexed families; a pure function, so resume cannot drift."""
    if s.name == "cosine":
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * it / s.total_iters))
    else:
        lr = base_lr * s.gamma ** sum(it >= m for m in s.milestones)
    if s.warmup_iters and it < s.warmup_iters:
        lr *= (it + 1) / s.warmup_iters
    return lr


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


@dataclass
class LoopState:
    """Everything beyond model/optimizer weights that a bit-exact resume needs."""

    it: int = 0
    perm: torch.Tensor | None = None
    pos: int = 0
    warmup_done: bool = False
    plateau_lr: float | None = None
    best_val_loss: float = math.inf
    best_val_iter: int = 0
    train_seconds: float = 0.0


def save_checkpoint(path: Path, model, opt, plateau, gen: torch.Generator, st: LoopState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "plateau": plateau.state_dict() if plateau else None, "generator": gen.get_state(),
                "cpu_rng": torch.get_rng_state(), "loop": st.__dict__}, tmp)
    os.replace(tmp, path)  # atomic: a kill leaves the old checkpoint or the new one, never half of one


def load_checkpoint(path: Path, model, opt, plateau, gen: torch.Generator) -> LoopState:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    if plateau and ck["plateau"]:
        plateau.load_state_dict(ck["plateau"])
    gen.set_state(ck["generator"])
    torch.set_rng_state(ck["cpu_rng"])
    st = LoopState(**ck["loop"])
    if st.perm is not None:
        st.perm = st.perm.to(gen.device)
    return st


EvalHook = Callable[[int, dict[str, float]], bool]  # (iteration, metrics) -> stop now?


def train(run: RunSpec, data: DeviceData, device: torch.device, checkpoint: Path | None = None,
          on_eval: EvalHook | None = None, progress: bool = True,
          evaluate_test: bool = True) -> tuple[dict[str, float], torch.nn.Module]:
    """Train one run; resumes from `checkpoint` if it exists. Returns the last evaluation and the model."""
    spec, s = run.spec, run.spec.schedule
    bs = spec.batch_size
    n_train = len(data.y_train)
    if bs > n_train:
        raise DataError(f"batch_size: expected at most the {n_train} training images of this split, got {bs}")
    dtype = param_dtype(spec)
    torch.manual_seed(run.seed)
    model = build_model(spec.model).to(device=device, dtype=dtype)
    mem_fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
    model = model.to(memory_format=mem_fmt)
    opt = make_optimizer(model, spec, device)
    plateau = None
    if s.name == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=s.mode, factor=s.gamma, patience=0)
    gen = torch.Generator(device=device)
    gen.manual_seed(run.seed)

    st = LoopState(plateau_lr=spec.optimizer.lr)
    if checkpoint and checkpoint.exists():
        st = load_checkpoint(checkpoint, model, opt, plateau, gen)

    eval_every = max(1, math.ceil(s.total_iters / spec.eval_points))
    patience_evals = math.ceil(s.patience / eval_every) if plateau else 0
    if plateau:
        plateau.patience = patience_evals
    autocast = autocast_for(spec, device)
    step = make_step(model, opt, spec, device)
    kill_at = int(os.environ.get("HARNESS_FAULT_KILL_AT", "0"))  # fault injection for the resume test

    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    wrong_sum = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    window_wrong = torch.zeros((), device=device, dtype=torch.int64)
    last: dict[str, float] = {}
    model.train()
    bar = tqdm(total=s.total_iters, initial=st.it, desc=run.run_name, unit="it", disable=not progress,
               dynamic_ncols=True, leave=False)
    t_start = time.perf_counter()
    while st.it < s.total_iters:
        if st.perm is None or st.pos + bs > n_train:
            st.perm, st.pos = torch.randperm(n_train, device=device, generator=gen), 0
        idx = st.perm[st.pos:st.pos + bs]
        st.pos += bs
        x, y = train_batch(data, idx, spec.data.augment, gen)

        warming = s.warmup is not None and not st.warmup_done and st.it < s.warmup.max_iters
        lr = s.warmup.lr if warming else (
            st.plateau_lr * (min(1.0, (st.it + 1) / s.warmup_iters) if s.warmup_iters else 1.0)
            if plateau else scheduled_lr(s, spec.optimizer.lr, st.it))
        loss, wrong = step(x, y, lr)
        loss_sum += loss.double()
        wrong_sum += wrong
        seen += bs
        st.it += 1
        bar.update(1)

        if warming:
            window_wrong += wrong
            if st.it % WARMUP_CHECK_EVERY == 0:
                err = 100.0 * window_wrong.item() / (WARMUP_CHECK_EVERY * bs)
                window_wrong.zero_()
                if not math.isfinite(loss_sum.item()):
                    raise Diverged(f"loss is not finite at iteration {st.it} (during warm-up)")
                if err < s.warmup.until_train_error:
                    st.warmup_done = True
            if st.it >= s.warmup.max_iters:
                st.warmup_done = True

        if st.it % eval_every == 0 or st.it == s.total_iters:
            train_loss = loss_sum.item() / max(seen // bs, 1)
            if not math.isfinite(train_loss):
                raise Diverged(f"training loss is {train_loss} at iteration {st.it}: the run diverged")
            elapsed = time.perf_counter() - t_start
            st.train_seconds += elapsed
            val_loss, val_err = evaluate(model, data.x_val, data.y_val, data.eval_mean, dtype, autocast)
            last = {"train_loss": train_loss, "train_error": 100.0 * wrong_sum.item() / max(seen, 1),
                    "val_loss": val_loss, "val_error": val_err, "lr": lr, "images_per_s": seen / elapsed}
            if evaluate_test:
                last["test_loss"], last["test_error"] = evaluate(model, data.x_test, data.y_test, data.eval_mean,
                                                                 dtype, autocast)
            stop = False
            if plateau and not warming:
                for g in opt.param_groups:
                    g["lr"] = st.plateau_lr
                plateau.step(val_loss)
                st.plateau_lr = opt.param_groups[0]["lr"]
            if val_loss < st.best_val_loss:
                st.best_val_loss, st.best_val_iter = val_loss, st.it
            elif s.early_stopping_patience and st.it - st.best_val_iter >= s.early_stopping_patience:
                stop = True
            bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.3g}", val_err=f"{val_err:.1f}",
                            img_s=f"{last['images_per_s']:.0f}")
            if on_eval is not None and on_eval(st.it, last):
                stop = True
            if checkpoint:
                save_checkpoint(checkpoint, model, opt, plateau, gen, st)
            loss_sum.zero_()
            wrong_sum.zero_()
            seen = 0
            t_start = time.perf_counter()
            if stop:
                last["stopped_early_at"] = st.it
                break
        if kill_at and st.it == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    if not last:  # killed after the final checkpoint: the weights are final, measure them again
        last["val_loss"], last["val_error"] = evaluate(model, data.x_val, data.y_val, data.eval_mean, dtype, autocast)
        if evaluate_test:
            last["test_loss"], last["test_error"] = evaluate(model, data.x_test, data.y_test, data.eval_mean,
                                                             dtype, autocast)
    last["iterations"] = st.it
    last["train_seconds"] = st.train_seconds
    return last, model
