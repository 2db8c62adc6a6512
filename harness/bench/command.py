"""Training throughput, side by side in one process: the usual DataLoader + transforms loop vs ours.

The baseline (harness.bench.baseline) is what the seed log and most CIFAR repositories do; ours (harness.bench.timing)
keeps the data on the device and never syncs inside the step. Same model, batch size and iterations. With
`--peer`, a real reproduction's own loop is timed too (harness.bench.peer), to show the baseline is not a straw man.
One result per call: a table on the terminal, or one JSON line to keep under reports/bench/ for `report`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.bench import peer as peer_mod
from harness.bench import timing
from harness.bench.baseline import bench_pil_batches
from harness.bench.grouped import bench_group
from harness.bench.render import print_result
from harness.core.archs import ARCHS
from harness.core.data import DeviceData, load_arrays
from harness.core.devices import check_jobs, device_name, pick_device, thread_share
from harness.core.models import build_model, count_params, train_flops_per_image
from harness.core.spec import ModelSpec
from harness.errors import UserError

PAPER_ITERS = 64000
PAPER_EVAL_POINTS = 32
BASELINES = ("dataloader", "peer")  # rows that are not our step: no _xN copies, not "the fastest step"


@dataclass(frozen=True)
class Setup:
    """What every row of one call is timed on."""

    images: np.ndarray
    labels: np.ndarray
    data: DeviceData  # the images on the device, for our rows
    net: ModelSpec  # the network every row trains
    flops: float  # training FLOPs per image of the model
    device: torch.device
    batch_size: int
    iters: int
    warmup: int
    workers: int  # DataLoader workers of the baseline and the peer


@dataclass(frozen=True)
class BenchOptions:
    """The command's options, read once from its command line (cli.cmd_bench)."""

    model: str = "resnet20"  # resnetN, plainN or an architecture of fixed depth (torchvision_resnet34)
    iters: int = 10  # timed iterations per row
    warmup: int = 3
    batch_size: int = 128
    data: str | None = None  # an .npz; None: random images
    device: str | None = None
    workers: int = 2  # DataLoader workers of the baseline and the peer
    fast: bool = False  # also the compiled variants
    variants: str | None = None  # comma-separated subset; None: all asked for by `fast`
    jobs: int = 1
    peer: str | None = None  # a checkout of akamaster/pytorch_resnet_cifar10
    as_json: bool = False
    group: str = "1"  # K, or sizes such as 2,8,16


@dataclass(frozen=True)
class Row:
    """One row to time: `variant` (dataloader, peer, ours, ours_graphed, ...) as `kind` says, alone, as `jobs` runs
    at once or as `runs` runs trained together."""

    variant: str
    kind: str  # "baseline" (dataloader, peer), "ours", "jobs" or "group"
    jobs: int = 1
    runs: int = 1
    fields: dict = field(default_factory=dict)  # Spec fields for our step

    @property
    def name(self) -> str:
        return {"jobs": f"{self.variant}_x{self.jobs}", "group": f"{self.variant}_group{self.runs}"}.get(
            self.kind, self.variant)


def bench(o: BenchOptions) -> int:
    """Time the variants asked for (default: dataloader and ours; `fast` adds the compiled ones), each also as
    `jobs` runs at once, with `group` > 1 also rows ours_group1..K (K runs trained together, harness.core.grouped; with
    ours_graphed chosen, on CUDA, also ours_graphed_group1..K: the group's step under CUDA graphs), and
    print the result as a table or, with `as_json`, one JSON line."""
    net = bench_model(o.model)
    check_jobs(o.jobs)
    sizes = group_sizes(o.group)
    wanted = [w for w in (o.variants or "").split(",") if w]
    dev = pick_device(o.device)
    ours_fields = {"ours": {}, **dict(timing.fast_variants(dev))}  # variant -> Spec fields for bench_ours
    known = ["dataloader", *ours_fields]
    if unknown := [w for w in wanted if w not in known]:
        raise UserError(f"--variants: unknown {', '.join(unknown)} on {dev.type}; expected some of "
                        f"{', '.join(known)}")
    the_peer = peer_mod.load(o.peer, _peer_depth(net)) if o.peer else None
    images, labels = _images(o.data)
    setup = Setup(images, labels, timing.bench_data(images, labels, dev), net,
                  train_flops_per_image(build_model(net)), dev, o.batch_size, o.iters, o.warmup, o.workers)
    chosen = [v for v in known if v in wanted] if wanted else known if o.fast else ["dataloader", "ours"]
    if the_peer:
        chosen.insert(1 if "dataloader" in chosen else 0, "peer")
    rows = [Row(v, "baseline" if v in BASELINES else "ours", fields=ours_fields.get(v, {})) for v in chosen]
    rows += [Row(v, "jobs", o.jobs, fields=ours_fields[v]) for v in chosen if v not in BASELINES and o.jobs > 1]
    grouped = ["ours"] + [v for v in ("ours_graphed",) if v in chosen]
    rows += [Row(v, "group", runs=k, fields=ours_fields[v]) for v in grouped for k in sizes]
    timed = {row.name: _row(setup, row, the_peer) for row in rows}
    result = _result(setup, timed, o.model.lower(), the_peer[2] if the_peer else None)
    if o.as_json:
        print(json.dumps(result))
    else:
        print_result(result, o.jobs, thread_share(o.jobs), PAPER_ITERS // PAPER_EVAL_POINTS)
    return 0


def group_sizes(text: str | int) -> list[int]:
    """--group K: the group rows 1..K (none for K = 1); --group 2,8,16: exactly those sizes (a GPU, where each
    compiled row costs a compile, measures a few sizes far apart)."""
    parts = str(text).split(",")
    if not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise UserError(f"--group: expected a group size K of at least 1, or sizes such as 1,4,8, got {text}")
    sizes = [int(p) for p in parts]
    if len(sizes) == 1:
        return list(range(1, sizes[0] + 1)) if sizes[0] > 1 else []
    return sorted(set(sizes))


def bench_model(name: str) -> ModelSpec:
    """--model: resnetN or plainN (the CIFAR nets of depth N = 6n+2), or an architecture whose layout fixes its
    depth (torchvision_resnet34), so that every net a campaign trains can be timed before it trains."""
    lowered = name.lower()
    fixed = [a.name for a in ARCHS.values() if a.depth is not None]
    if lowered in fixed:
        return ModelSpec(arch=lowered)
    for arch in (a.name for a in ARCHS.values() if a.depth is None):
        digits = lowered.removeprefix(arch)
        if lowered.startswith(arch) and digits.isdigit() and int(digits) >= 8 and (int(digits) - 2) % 6 == 0:
            return ModelSpec(arch=arch, depth=int(digits))
    raise UserError(f"--model: expected resnetN or plainN with N = 6n+2 (resnet20, plain32, ...) or one of "
                    f"{', '.join(fixed)}, got {name}")


def _peer_depth(net: ModelSpec) -> int:
    """The peer (akamaster's resnet.py) builds the CIFAR ResNets only."""
    if net.arch != "resnet":
        raise UserError(f"--peer: the peer builds CIFAR ResNets only (resnetN); expected --model resnetN, got "
                        f"{net.arch}")
    return net.depth


def _images(data: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The training images of an .npz, or 10,000 random ones: throughput does not depend on what they show."""
    if data:
        arr = load_arrays(data)
        return arr.x_train, arr.y_train
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 10000)


def _row(s: Setup, row: Row, peer) -> dict:
    """One row timed, with its own peak memory."""
    timing.reset_peak_mem(s.device)
    print(f"bench: {row.name} ({s.iters} timed iterations after {s.warmup} warm-up)...", file=sys.stderr, flush=True)
    common = (s.net, s.batch_size, s.iters, s.warmup, s.device)
    jobs, runs = row.jobs, row.runs
    if row.variant == "dataloader":
        warm_s, secs = timing.bench_dataloader(s.images, s.labels, *common, s.workers)
    elif row.variant == "peer":
        warm_s, secs = peer_mod.bench_peer(peer, s.images, s.labels, s.batch_size, s.iters, s.warmup, s.device,
                                           s.workers)
    elif row.kind == "group":
        warm_s, secs = bench_group(s.data, *common, runs, **row.fields)
    elif row.kind == "ours":
        warm_s, secs = timing.bench_ours(s.data, *common, **row.fields)
    else:
        warm_s, job_secs, mem = timing.bench_jobs(s.images, s.labels, *common, jobs, row.fields)
        secs = sum(job_secs) / jobs
    ms = 1000 * secs / s.iters
    ips = jobs * runs * s.iters * s.batch_size / secs  # all jobs (runs of a group) together
    return {"variant": row.variant, "kind": row.kind,
            "images_per_s": round(ips, 1), "ms_per_iter": round(ms, 2),  # per run
                   "projected_64k_run_s": round(ms * PAPER_ITERS / 1000, 1),
                   "achieved_gflop_s": round(ips * s.flops / 1e9, 1),
                   "peak_mem_mb": round(timing.peak_mem_mb(s.device) if jobs == 1 else mem, 1),  # all jobs
                   "warmup_s": round(warm_s, 1),  # includes compiling and capturing the graphs
                   "jobs": jobs, "runs": runs, "images_per_s_per_run": round(ips / (jobs * runs), 1)}


def _result(s: Setup, variants: dict[str, dict], name: str, peer_where: str | None) -> dict:
    """The rows with their speedups, and the figures beside them: the loader alone, the baseline's transforms,
    MLflow's overhead at the paper's cadence, a GEMM ceiling."""
    base = variants.get("dataloader", {}).get("images_per_s")
    peer_ips = variants.get("peer", {}).get("images_per_s")
    ours_ips = variants.get("ours", {}).get("images_per_s")
    for v in variants.values():
        v["speedup_vs_dataloader"] = None if base is None else round(v["images_per_s"] / base, 2)
        if "ours_group1" in variants:
            v["speedup_vs_ours"] = None if ours_ips is None else round(v["images_per_s"] / ours_ips, 2)
    for v in variants.values():  # a group against one run of its own variant alone, in this process
        alone = variants.get(v["variant"], {}).get("images_per_s") if v["kind"] == "group" else None
        v["speedup_vs_alone"] = None if alone is None else round(v["images_per_s"] / alone, 2)
        if peer_ips:
            v["speedup_vs_peer"] = round(v["images_per_s"] / peer_ips, 2)
    log_s = timing.bench_mlflow()
    ours = {k: v for k, v in variants.items() if k not in BASELINES and v["jobs"] == v["runs"] == 1} or variants
    step_s = min(v["ms_per_iter"] for v in ours.values()) / 1000  # the fastest step
    batch_s = timing.bench_batches(s.data, s.batch_size, max(s.iters, 5), s.device)
    eval_every = PAPER_ITERS // PAPER_EVAL_POINTS
    return {
        "device": device_name(s.device), "model": name, "params": count_params(build_model(s.net)),
        "batch_size": s.batch_size, "iters": s.iters, "dataloader_workers": s.workers,
        "train_gflop_per_image": round(s.flops / 1e9, 3),
        "matmul_gflop_s": round(timing.matmul_gflops(s.device), 1),
        "variants": variants, "peer": peer_where, "peak_mem_per_row": True,
        "loader_ms_per_batch": round(1000 * batch_s, 3),
        "transforms_cpu_ms_per_batch": round(1000 * bench_pil_batches(s.images, s.labels, s.batch_size), 1),
        "loader_pct_of_fastest_iter": round(100 * batch_s / step_s, 2),
        "mlflow_log_ms_per_eval_point": None if log_s is None else round(1000 * log_s, 2),
        "mlflow_overhead_pct": None if log_s is None else round(100 * log_s / (eval_every * step_s), 4),
        "mlflow_overhead_pct_if_logged_every_step": None if log_s is None else round(100 * log_s / step_s, 2),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }
