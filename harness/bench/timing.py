"""The timed loops of `bench`: the baseline's and ours (alone and as N runs at once), our loader alone, one MLflow
log, a GEMM ceiling, and each row's peak memory.

Ours keeps the data on the device, augments whole batches there and never syncs inside the step; the baseline feeds
the model from harness.bench.baseline's pipeline. Every row starts from the same model and optimizer, so rows differ
in their loop alone. MLflow overhead is measured on a real SQLite store: the time of one batched `log_batch` at an
evaluation point, set by `bench` against the training time between two evaluation points of a paper-length run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.bench.baseline import pil_loader
from harness.core.data import Arrays, DeviceData, to_device, train_batch
from harness.core.devices import sync, thread_share
from harness.core.models import build_model
from harness.core.spec import DataSpec, ModelSpec, Spec
from harness.core.train import make_optimizer, make_step
from harness.tracking import store as tracking


def seed0_model(spec: Spec, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Seed 0, the spec's model on `device` and its optimizer as training makes it (fused or foreach)."""
    torch.manual_seed(0)
    model = build_model(spec.model).to(device)
    return model, make_optimizer(model, spec, device)


def reset_peak_mem(device) -> None:
    """Each row's own peak: on CUDA the allocator's; on Linux the process's RSS high-water mark, which writing 5
    to /proc/self/clear_refs lowers to the current RSS (without it every CPU row showed the largest so far)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the figure stays the process's peak so far
        pass


def peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # This process's peak RSS: VmHWM, since ru_maxrss of a spawned job starts at its parent's peak (Linux keeps
    # it across fork and exec).
    status = Path("/proc/self/status")
    if status.exists():
        hwm = [ln.split()[1] for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")]
        if hwm:
            return int(hwm[0]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_dataloader(images: np.ndarray, labels: np.ndarray, net: ModelSpec, bs: int, iters: int, warmup: int,
                     device: torch.device, workers: int) -> tuple[float, float]:
    """(warm-up s, timed s) of the baseline loop over warmup + iters batches: the baseline pipeline, a
    host-to-device copy per batch and `loss.item()` every step."""
    loader = pil_loader(images, labels, bs, workers, device.type == "cuda")
    model, opt = seed0_model(Spec(model=net), device)
    model.train()

    def batches():
        while True:
            yield from loader

    it = batches()
    start = t0 = time.perf_counter()
    for i in range(warmup + iters):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # the usual per-step logging
    sync(device)
    return t0 - start, time.perf_counter() - t0


def bench_ours(data: DeviceData, net: ModelSpec, bs, iters, warmup, device, before_timing=None, **fast):
    """Our training step (train.make_step) on device-resident data; `fast` holds Spec fields such as
    compile="reduce-overhead", dtype="bfloat16", channels_last=True. `before_timing` lets concurrent jobs start
    their timed iterations together."""
    spec = Spec(model=net, batch_size=bs, **fast)
    model, opt = seed0_model(spec, device)
    model = model.to(memory_format=torch.channels_last if spec.channels_last else torch.contiguous_format)
    model.train()
    step = make_step(model, opt, spec, device)
    gen = torch.Generator(device=device).manual_seed(0)
    loss_sum = torch.zeros((), device=device)
    n = len(data.y_train)
    perm, pos = torch.randperm(n, device=device, generator=gen), 0
    start = t0 = time.perf_counter()
    for i in range(warmup + iters):
        if i == warmup:
            sync(device)
            if before_timing is not None:
                before_timing()
            t0 = time.perf_counter()
        if pos + bs > n:
            perm, pos = torch.randperm(n, device=device, generator=gen), 0
        x, y = train_batch(data, perm[pos:pos + bs], "crop_flip", gen)
        pos += bs
        loss, _ = step(x, y, 0.1)
        loss_sum += loss
    sync(device)
    if not torch.isfinite(loss_sum):
        raise RuntimeError(f"bench: the loss is not finite for {fast}")
    return t0 - start, time.perf_counter() - t0


def bench_data(images: np.ndarray, labels: np.ndarray, device) -> DeviceData:
    arrays = Arrays(images, labels, images[:1000], labels[:1000], "bench", "bench")
    return to_device(arrays, DataSpec(val_size=100), device, torch.float32)


def _one_job(images, labels, net: ModelSpec, bs, iters, warmup, device: str, threads: int, fields: dict, barrier):
    torch.set_num_threads(threads)
    device = torch.device(device)
    data = bench_data(images, labels, device)
    warm_s, secs = bench_ours(data, net, bs, iters, warmup, device, before_timing=barrier.wait, **fields)
    return warm_s, secs, peak_mem_mb(device)


def bench_jobs(images, labels, net: ModelSpec, bs, iters, warmup, device, jobs: int, fields: dict):
    """`jobs` copies of our step at once, each in a spawned process with its share of the CPU threads (what
    `run --jobs` does), timed together from a barrier: (warm-up s, per-job seconds, summed peak MB)."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        barrier = manager.Barrier(jobs)
        futures = [pool.submit(_one_job, images, labels, net, bs, iters, warmup, str(device), thread_share(jobs),
                               fields, barrier) for _ in range(jobs)]
        results = [f.result() for f in futures]
    return max(r[0] for r in results), [r[1] for r in results], sum(r[2] for r in results)


def bench_batches(data: DeviceData, bs: int, iters: int, device) -> float:
    """Seconds per batch of our loader alone (gather, normalize, pad-crop-flip), to show whether the step or the
    augmentation bounds a training iteration."""
    gen = torch.Generator(device=device).manual_seed(0)
    n = len(data.y_train)
    idx = [torch.randint(0, n, (bs,), device=device, generator=gen) for _ in range(iters + 2)]
    for i in idx[:2]:
        train_batch(data, i, "crop_flip", gen)
    sync(device)
    t0 = time.perf_counter()
    for i in idx[2:]:
        train_batch(data, i, "crop_flip", gen)
    sync(device)
    return (time.perf_counter() - t0) / iters


def bench_mlflow(n_calls: int = 20) -> float | None:
    """Mean seconds of one evaluation point's batched log (8 metrics) on a real SQLite store."""
    try:
        import mlflow  # noqa: F401
    except ImportError:  # e.g. on a GPU machine that trains offline (run --offline) and has no MLflow
        return None
    with tempfile.TemporaryDirectory() as d:
        old = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{d}/mlflow.db"
        try:
            c = tracking.client()
            exp = tracking.experiment_id(c, "bench")
            run_id = c.create_run(exp, run_name="bench").info.run_id
            metrics = {k: 1.0 for k in ("train_loss", "train_error", "val_loss", "val_error", "test_loss",
                                         "test_error", "lr", "images_per_s")}
            tracking.log_metrics(c, run_id, metrics, 0)
            total = sum(tracking.log_metrics(c, run_id, metrics, s) for s in range(1, n_calls + 1))
            c.set_terminated(run_id)
        finally:
            if old is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = old
    return total / n_calls


def matmul_gflops(device, n: int = 2048, reps: int = 10) -> float:
    """Achieved fp32 GEMM rate: a practical ceiling to set the step's GFLOP/s against."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def fast_variants(device) -> list[tuple[str, dict]]:
    """The fast paths worth timing on this device: CUDA graphs exist only on CUDA; on a CPU oneDNN's convolutions
    prefer channels_last, while bf16 there is emulated unless the cores have AMX/AVX512-BF16."""
    if device.type == "cuda":
        return [("ours_compiled", {"compile": True}),
                ("ours_graphed", {"compile": "reduce-overhead"}),
                ("ours_graphed_bf16", {"compile": "reduce-overhead", "dtype": "bfloat16", "channels_last": True})]
    return [("ours_channels_last", {"channels_last": True}),
            ("ours_compiled", {"compile": True}),
            ("ours_compiled_channels_last", {"compile": True, "channels_last": True})]

