"""Training throughput, side by side in one process: the usual DataLoader + transforms loop vs ours.

The baseline is what the seed log and most CIFAR repositories do: per-image PIL transforms in DataLoader
workers, a host-to-device copy per batch and `loss.item()` every step. Ours keeps the data on the device,
augments whole batches there and never syncs inside the step. Same model, batch size and iterations. With
`--peer`, a real reproduction's own loop is timed too (harness/peer.py), to show the baseline is not a straw man.
MLflow overhead is measured on a real SQLite store: the time of one batched `log_batch` at an
evaluation point, against the training time between two evaluation points of a paper-length run.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.bench_view import duration
from harness.data import DeviceData, load_arrays, train_batch
from harness.devices import check_jobs, device_name, pick_device, sync, thread_share
from harness.errors import UserError
from harness.models import build_model, count_params, train_flops_per_image
from harness.spec import ModelSpec, Spec
from harness.train import make_step

PAPER_ITERS = 64000
PAPER_EVAL_POINTS = 32
BASELINES = ("dataloader", "peer")  # rows that are not our step: no _xN copies, not "the fastest step"


def _reset_peak_mem(device) -> None:
    """Each row's own peak: on CUDA the allocator's; on Linux the process's RSS high-water mark, which writing 5
    to /proc/self/clear_refs lowers to the current RSS (without it every CPU row showed the largest so far)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the figure stays the process's peak so far
        pass


def _peak_mem_mb(device) -> float:
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


def _fresh_model(depth: int, device, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelSpec(arch="resnet", depth=depth)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                          **({"foreach": True} if device.type == "cpu" else {"fused": True}))
    return model, opt


def pil_dataset(images: np.ndarray, labels: np.ndarray, transform):
    """What torchvision.datasets.CIFAR10.__getitem__ does (a PIL image through `transform`), over our arrays."""
    from PIL import Image
    from torch.utils.data import Dataset

    class PilCifar(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.fromarray(images[i])), int(labels[i])

    return PilCifar()


def _pil_loader(images: np.ndarray, labels: np.ndarray, bs: int, workers: int, pin: bool):
    """torchvision's CIFAR10 pipeline: per-image PIL transforms in DataLoader workers."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
    return DataLoader(pil_dataset(images, labels, tf), batch_size=bs, shuffle=True, drop_last=True,
                      num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)


def bench_pil_batches(images: np.ndarray, labels: np.ndarray, bs: int, n: int = 10) -> float:
    """CPU seconds per batch of the transforms alone (no workers): what the baseline's workers must find on the
    host's cores, beside the training step, for every batch."""
    it = iter(_pil_loader(images, labels, bs, 0, False))
    next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return (time.perf_counter() - t0) / n


def bench_dataloader(images: np.ndarray, labels: np.ndarray, depth, bs, iters, warmup, device, workers):
    loader = _pil_loader(images, labels, bs, workers, device.type == "cuda")
    model, opt = _fresh_model(depth, device)
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


def bench_ours(data: DeviceData, depth, bs, iters, warmup, device, before_timing=None, **fast):
    """Our training step (train.make_step) on device-resident data; `fast` holds Spec fields such as
    compile="reduce-overhead", dtype="bfloat16", channels_last=True. `before_timing` lets concurrent jobs start
    their timed iterations together."""
    spec = Spec(model=ModelSpec(arch="resnet", depth=depth), batch_size=bs, **fast)
    model, opt = _fresh_model(depth, device)
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
        x, y = train_batch(data, perm[pos:pos + bs], True, gen)
        pos += bs
        loss, _ = step(x, y, 0.1)
        loss_sum += loss
    sync(device)
    if not torch.isfinite(loss_sum):
        raise RuntimeError(f"bench: the loss is not finite for {fast}")
    return t0 - start, time.perf_counter() - t0


def _bench_data(images: np.ndarray, labels: np.ndarray, device) -> DeviceData:
    from harness.data import Arrays, to_device
    from harness.spec import DataSpec

    arrays = Arrays(images, labels, images[:1000], labels[:1000], "bench", "bench")
    return to_device(arrays, DataSpec(val_size=100), device, torch.float32)


def _one_job(images, labels, depth, bs, iters, warmup, device: str, threads: int, fields: dict, barrier):
    torch.set_num_threads(threads)
    device = torch.device(device)
    data = _bench_data(images, labels, device)
    warm_s, secs = bench_ours(data, depth, bs, iters, warmup, device, before_timing=barrier.wait, **fields)
    return warm_s, secs, _peak_mem_mb(device)


def bench_jobs(images, labels, depth, bs, iters, warmup, device, jobs: int, fields: dict):
    """`jobs` copies of our step at once, each in a spawned process with its share of the CPU threads (what
    `run --jobs` does), timed together from a barrier: (warm-up s, per-job seconds, summed peak MB)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        barrier = manager.Barrier(jobs)
        futures = [pool.submit(_one_job, images, labels, depth, bs, iters, warmup, str(device), thread_share(jobs),
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
        train_batch(data, i, True, gen)
    sync(device)
    t0 = time.perf_counter()
    for i in idx[2:]:
        train_batch(data, i, True, gen)
    sync(device)
    return (time.perf_counter() - t0) / iters


def bench_mlflow(n_calls: int = 20) -> float | None:
    """Mean seconds of one evaluation point's batched log (8 metrics) on a real SQLite store."""
    import os

    from harness import tracking

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


def main(a) -> int:
    name = a.model.lower()
    if not name.startswith("resnet") or not name[6:].isdigit() or (int(name[6:]) - 2) % 6:
        raise UserError(f"--model: expected resnetN with N = 6n+2 (resnet20, resnet32, ...), got {a.model}")
    depth = int(name[6:])
    check_jobs(a.jobs)
    wanted = [w for w in (a.variants or "").split(",") if w]
    device = pick_device(a.device)
    ours_fields = {"ours": {}, **dict(fast_variants(device))}  # variant -> Spec fields for bench_ours
    known = ["dataloader", *ours_fields]
    if unknown := [w for w in wanted if w not in known]:
        raise UserError(f"--variants: unknown {', '.join(unknown)} on {device.type}; expected some of "
                        f"{', '.join(known)}")
    peer = None
    if a.peer:
        from harness import peer as peer_mod

        peer = peer_mod.load(a.peer, depth)
    if a.data:
        arr = load_arrays(a.data)
        images, labels = arr.x_train, arr.y_train
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 10000)
    data = _bench_data(images, labels, device)

    flops = train_flops_per_image(build_model(ModelSpec(depth=depth)))
    chosen = [v for v in known if v in wanted] if wanted else known if a.compile else ["dataloader", "ours"]
    if peer:
        chosen.insert(1 if "dataloader" in chosen else 0, "peer")

    rows = [(v, 1) for v in chosen] + [(v, a.jobs) for v in chosen if v not in BASELINES and a.jobs > 1]
    variants = {}
    for vname, jobs in rows:
        _reset_peak_mem(device)
        label = vname if jobs == 1 else f"{vname}_x{jobs}"
        print(f"bench: {label} ({a.iters} timed iterations after {a.warmup} warm-up)...", file=sys.stderr,
              flush=True)
        if vname == "dataloader":
            warm_s, secs = bench_dataloader(images, labels, depth, a.batch_size, a.iters, a.warmup, device, a.workers)
        elif vname == "peer":
            warm_s, secs = peer_mod.bench_peer(peer, images, labels, a.batch_size, a.iters, a.warmup, device,
                                               a.workers)
        elif jobs == 1:
            warm_s, secs = bench_ours(data, depth, a.batch_size, a.iters, a.warmup, device, **ours_fields[vname])
        else:
            warm_s, job_secs, mem = bench_jobs(images, labels, depth, a.batch_size, a.iters, a.warmup, device, jobs,
                                               ours_fields[vname])
            secs = sum(job_secs) / jobs
        ms = 1000 * secs / a.iters
        ips = jobs * a.iters * a.batch_size / secs  # all jobs together
        variants[label] = {"images_per_s": round(ips, 1), "ms_per_iter": round(ms, 2),  # per run
                           "projected_64k_run_s": round(ms * PAPER_ITERS / 1000, 1),
                           "achieved_gflop_s": round(ips * flops / 1e9, 1),
                           "peak_mem_mb": round(_peak_mem_mb(device) if jobs == 1 else mem, 1),  # all jobs
                           "warmup_s": round(warm_s, 1),  # includes compiling and capturing the graphs
                           "jobs": jobs}
    base = variants.get("dataloader", {}).get("images_per_s")
    peer_ips = variants.get("peer", {}).get("images_per_s")
    for v in variants.values():
        v["speedup_vs_dataloader"] = None if base is None else round(v["images_per_s"] / base, 2)
        if peer_ips:
            v["speedup_vs_peer"] = round(v["images_per_s"] / peer_ips, 2)
    log_s = bench_mlflow()
    ours = {k: v for k, v in variants.items() if k not in BASELINES and v["jobs"] == 1} or variants
    step_s = min(v["ms_per_iter"] for v in ours.values()) / 1000  # the fastest step
    batch_s = bench_batches(data, a.batch_size, max(a.iters, 5), device)
    eval_every = PAPER_ITERS // PAPER_EVAL_POINTS
    result = {
        "device": device_name(device), "model": name, "params": count_params(build_model(ModelSpec(depth=depth))),
        "batch_size": a.batch_size, "iters": a.iters, "dataloader_workers": a.workers,
        "train_gflop_per_image": round(flops / 1e9, 3), "matmul_gflop_s": round(matmul_gflops(device), 1),
        "variants": variants, "peer": peer[2] if peer else None, "peak_mem_per_row": True,
        "loader_ms_per_batch": round(1000 * batch_s, 3),
        "transforms_cpu_ms_per_batch": round(1000 * bench_pil_batches(images, labels, a.batch_size), 1),
        "loader_pct_of_fastest_iter": round(100 * batch_s / step_s, 2),
        "mlflow_log_ms_per_eval_point": None if log_s is None else round(1000 * log_s, 2),
        "mlflow_overhead_pct": None if log_s is None else round(100 * log_s / (eval_every * step_s), 4),
        "mlflow_overhead_pct_if_logged_every_step": None if log_s is None else round(100 * log_s / step_s, 2),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"{result['date']}  {result['device']}  {name} ({result['params']:,} params)  batch {a.batch_size}, "
          f"{a.iters} iterations, torch {torch.__version__}")
    print(f"{'variant':<28}{'images/s':>10}{'ms/iter':>10}{'64k run':>10}{'GFLOP/s':>10}{'x loader':>10}"
          + (f"{'x peer':>10}" if peer else "") + f"{'peak MB':>10}{'warm-up s':>10}")
    for vname, v in variants.items():
        ratio = "-" if v["speedup_vs_dataloader"] is None else f"{v['speedup_vs_dataloader']:.2f}"
        print(f"{vname:<28}{v['images_per_s']:>10.1f}{v['ms_per_iter']:>10.2f}"
              f"{duration(v['projected_64k_run_s']):>10}{v['achieved_gflop_s']:>10.1f}{ratio:>10}"
              + (f"{v['speedup_vs_peer']:>10.2f}" if peer else "") + f"{v['peak_mem_mb']:>10.0f}{v['warmup_s']:>10.1f}")
    if peer:
        print(f"peer: its own trainer.train() and resnet.{name}() from {peer[2]}, {a.workers} DataLoader workers")
    if a.jobs > 1:
        print(f"_x{a.jobs} rows: {a.jobs} runs at once, {thread_share(a.jobs)} CPU thread(s) each; images/s, GFLOP/s, "
              f"x loader and peak MB are their total, ms/iter and the 64k run each run's")
    if device.type == "cpu":
        print("peak MB: this process's resident memory high-water mark during the row (Linux; DataLoader worker "
              "processes not counted)")
    print(f"fp32 matmul on this device: {result['matmul_gflop_s']} GFLOP/s; one training image = "
          f"{result['train_gflop_per_image']} GFLOP")
    print(f"our loader alone (gather + normalize + crop/flip): {result['loader_ms_per_batch']} ms per batch = "
          f"{result['loader_pct_of_fastest_iter']}% of the fastest iteration; the baseline's transforms: "
          f"{result['transforms_cpu_ms_per_batch']} ms of CPU per batch")
    if log_s is None:
        print("MLflow: not installed here, overhead not measured")
        return 0
    print(f"MLflow: {result['mlflow_log_ms_per_eval_point']} ms per evaluation point = "
          f"{result['mlflow_overhead_pct']}% of step time at the paper cadence (every {eval_every} iterations); "
          f"{result['mlflow_overhead_pct_if_logged_every_step']}% if logged every step")
    return 0
