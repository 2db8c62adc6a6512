"""Training throughput, side by side in one process: the usual DataLoader + transforms loop vs ours.

The baseline (harness/baseline.py) is what the seed log and most CIFAR repositories do; ours (harness/timing.py)
keeps the data on the device and never syncs inside the step. Same model, batch size and iterations. With
`--peer`, a real reproduction's own loop is timed too (harness/peer.py), to show the baseline is not a straw man.
One result per call: a table on the terminal, or one JSON line to keep under reports/bench/ for `report`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from harness.bench import peer as peer_mod
from harness.bench import timing
from harness.bench.baseline import bench_pil_batches
from harness.bench.grouped import bench_group
from harness.bench.render import print_result
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
    depth: int
    flops: float  # training FLOPs per image of the model
    device: torch.device
    batch_size: int
    iters: int
    warmup: int
    workers: int  # DataLoader workers of the baseline and the peer


def bench(model: str = "resnet20", *, iters: int = 10, warmup: int = 3, batch_size: int = 128, data: str | None = None,
          device: str | None = None, workers: int = 2, fast: bool = False, variants: str | None = None,
          jobs: int = 1, peer: str | None = None, as_json: bool = False, group: str = "1") -> int:
    """Time the variants asked for (default: dataloader and ours; `fast` adds the compiled ones), each also as
    `jobs` runs at once, with `group` > 1 also rows ours_group1..K (K runs trained together, harness.core.grouped; with
    ours_graphed chosen, on CUDA, also ours_graphed_group1..K: the group's step under CUDA graphs), and
    print the result as a table or, with `as_json`, one JSON line."""
    depth = _depth(model)
    check_jobs(jobs)
    sizes = group_sizes(group)
    wanted = [w for w in (variants or "").split(",") if w]
    dev = pick_device(device)
    ours_fields = {"ours": {}, **dict(timing.fast_variants(dev))}  # variant -> Spec fields for bench_ours
    known = ["dataloader", *ours_fields]
    if unknown := [w for w in wanted if w not in known]:
        raise UserError(f"--variants: unknown {', '.join(unknown)} on {dev.type}; expected some of "
                        f"{', '.join(known)}")
    the_peer = peer_mod.load(peer, depth) if peer else None
    images, labels = _images(data)
    setup = Setup(images, labels, timing.bench_data(images, labels, dev), depth,
                  train_flops_per_image(build_model(ModelSpec(depth=depth))), dev, batch_size, iters, warmup, workers)
    chosen = [v for v in known if v in wanted] if wanted else known if fast else ["dataloader", "ours"]
    if the_peer:
        chosen.insert(1 if "dataloader" in chosen else 0, "peer")
    rows = [(v, 1) for v in chosen] + [(v, jobs) for v in chosen if v not in BASELINES and jobs > 1]
    timed = dict(_row(setup, vname, n, ours_fields.get(vname, {}), the_peer) for vname, n in rows)
    grouped = [("ours", {})] + [(v, ours_fields[v]) for v in ("ours_graphed",) if v in chosen]
    timed.update(_row(setup, f"{v}_group{k}", 1, fields, None, k) for v, fields in grouped for k in sizes)
    result = _result(setup, timed, model.lower(), the_peer[2] if the_peer else None)
    if as_json:
        print(json.dumps(result))
    else:
        print_result(result, jobs, thread_share(jobs), PAPER_ITERS // PAPER_EVAL_POINTS)
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


def _depth(model: str) -> int:
    name = model.lower()
    if not name.startswith("resnet") or not name[6:].isdigit() or (int(name[6:]) - 2) % 6:
        raise UserError(f"--model: expected resnetN with N = 6n+2 (resnet20, resnet32, ...), got {model}")
    return int(name[6:])


def _images(data: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The training images of an .npz, or 10,000 random ones: throughput does not depend on what they show."""
    if data:
        arr = load_arrays(data)
        return arr.x_train, arr.y_train
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 10000)


def _row(s: Setup, vname: str, jobs: int, fields: dict, peer, runs: int = 1) -> tuple[str, dict]:
    """One row, named: variant `vname` timed alone (jobs == 1), as `jobs` runs at once, or as `runs` runs trained
    together in one step (ours_groupK), with its own peak memory."""
    timing.reset_peak_mem(s.device)
    label = vname if jobs == 1 else f"{vname}_x{jobs}"
    print(f"bench: {label} ({s.iters} timed iterations after {s.warmup} warm-up)...", file=sys.stderr, flush=True)
    common = (s.depth, s.batch_size, s.iters, s.warmup, s.device)
    if vname == "dataloader":
        warm_s, secs = timing.bench_dataloader(s.images, s.labels, *common, s.workers)
    elif vname == "peer":
        warm_s, secs = peer_mod.bench_peer(peer, s.images, s.labels, s.batch_size, s.iters, s.warmup, s.device,
                                           s.workers)
    elif "_group" in vname:
        warm_s, secs = bench_group(s.data, *common, runs, **fields)
    elif jobs == 1:
        warm_s, secs = timing.bench_ours(s.data, *common, **fields)
    else:
        warm_s, job_secs, mem = timing.bench_jobs(s.images, s.labels, *common, jobs, fields)
        secs = sum(job_secs) / jobs
    ms = 1000 * secs / s.iters
    ips = jobs * runs * s.iters * s.batch_size / secs  # all jobs (runs of a group) together
    return label, {"images_per_s": round(ips, 1), "ms_per_iter": round(ms, 2),  # per run
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
    for vname, v in variants.items():  # a group against one run of its own variant alone, in this process
        alone = variants.get(vname.split("_group")[0], {}).get("images_per_s") if "_group" in vname else None
        v["speedup_vs_alone"] = None if alone is None else round(v["images_per_s"] / alone, 2)
        if peer_ips:
            v["speedup_vs_peer"] = round(v["images_per_s"] / peer_ips, 2)
    log_s = timing.bench_mlflow()
    ours = {k: v for k, v in variants.items() if k not in BASELINES and v["jobs"] == v["runs"] == 1} or variants
    step_s = min(v["ms_per_iter"] for v in ours.values()) / 1000  # the fastest step
    batch_s = timing.bench_batches(s.data, s.batch_size, max(s.iters, 5), s.device)
    eval_every = PAPER_ITERS // PAPER_EVAL_POINTS
    return {
        "device": device_name(s.device), "model": name, "params": count_params(build_model(ModelSpec(depth=s.depth))),
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
