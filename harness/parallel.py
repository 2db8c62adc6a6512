"""A batch of runs (`run`, `table`): one at a time in this process, or several at once on one device (or dealt over
several GPUs), the lever for a whole table's throughput.

A batch-128 CIFAR ResNet step leaves much of a device idle. On a 2-core CPU, two runs with one thread each
trained 1.1-1.25x more images per second in total than one run with both threads (`bench --jobs 2` measures
it on the machine at hand): small convolutions scale poorly across threads. Not measured on a GPU yet.
Runs are independent (own MLflow run, own checkpoint keyed by spec_hash): they share nothing but the device.

Workers are spawned processes, never forked: a forked child of a process that has touched CUDA cannot use it.
Each gets the CPU threads of the parent divided by the number of jobs. On a machine with several GPUs and
`--device cuda` (or none), each worker owns one GPU for its life, the workers dealt round-robin over the GPUs, so
`--jobs 8` on four GPUs trains two runs on each; `--device cuda:1` keeps every worker on that one GPU. A run
killed with its worker resumes from its checkpoint on the next call, exactly as in one process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial

import torch
from tqdm import tqdm

from harness import tracking
from harness.data import Arrays
from harness.devices import thread_share, worker_devices
from harness.spec import RunSpec

_worker: dict = {}


def show_bars(a) -> bool:
    """Bars only on a terminal: in a log file or CI a bar is hundreds of carriage returns on one line, so there each
    evaluation point gets a line of its own instead (as under --no-progress)."""
    return not a.no_progress and sys.stderr.isatty()


def _init(arrays: Arrays, devices, threads: int, offline: str | None) -> None:
    """`devices` is a queue holding one device per worker: each worker takes its own as it starts."""
    torch.set_num_threads(threads)
    # Bars are off in workers; tqdm would still make a multiprocessing lock, which a worker leaving by os._exit on
    # Ctrl-C never unlinks ("leaked semaphore objects" warning). A thread lock serves a process without bars.
    tqdm.set_lock(threading.RLock())
    device = torch.device(devices.get())
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels, graphs and caches of this process go to its GPU
    _worker.update(arrays=arrays, device=device, offline=offline, busy=False)
    signal.signal(signal.SIGINT, _on_ctrl_c)


def _on_ctrl_c(signum, frame) -> None:
    """A training worker marks its run KILLED on the way out; an idle one has nothing to mark and leaves quietly
    (a KeyboardInterrupt in multiprocessing's queue wait prints a traceback that reads like a failure)."""
    if _worker.get("busy"):
        raise KeyboardInterrupt
    os._exit(130)


def execute_one(run: RunSpec, arrays: Arrays, device: torch.device, force: bool, offline: str | None,
                progress: bool) -> str:
    """Into MLflow, or without it into `offline`/<spec_hash>/ (`run --offline`)."""
    from pathlib import Path

    from harness.runner import execute, execute_offline

    if offline:
        return execute_offline(run, arrays, device, Path(offline), force=force, progress=progress)
    return execute(run, arrays, device, force=force, progress=progress)


def _execute(run: RunSpec, force: bool) -> str:
    w = _worker
    w["busy"] = True
    try:
        return execute_one(run, w["arrays"], w["device"], force, w["offline"], progress=False)
    except KeyboardInterrupt:  # the run is marked KILLED by now; leave at once rather than take a queued run
        sys.stderr.flush()
        os._exit(130)
    finally:
        w["busy"] = False


def execute_all(runs: list[RunSpec], arrays: Arrays, device: torch.device, jobs: int = 1, force: bool = False,
                offline: str | None = None, progress: bool = True,
                label: Callable[[RunSpec], str] = lambda r: r.run_name) -> dict[str, int]:
    """Run `runs`, `jobs` at a time; returns {status: count}. With jobs > 1 they go to spawned workers and bars are
    off (N bars would interleave): each worker logs one line per evaluation point instead. The time-left estimate
    weighs each run by its GFLOPs on these arrays."""
    from harness.cost import Rate, gflops_on_data  # not at the top: a spawned worker imports this module

    counts: dict[str, int] = {}
    cost = partial(gflops_on_data, arrays=arrays)
    if jobs == 1 or not runs:
        rate = Rate(runs, cost)
        for i, r in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {label(r)}  ({rate.line()})", file=sys.stderr, flush=True)
            status = execute_one(r, arrays, device, force, offline, progress)
            counts[status] = counts.get(status, 0) + 1
            rate.done(r, status)
        return counts
    hashes = [r.spec_hash(arrays.data_id) for r in runs]
    unique = [r for i, r in enumerate(runs) if hashes[i] not in hashes[:i]]  # one worker per run: the first one
    if len(unique) < len(runs):
        counts["skipped"] = len(runs) - len(unique)
        print(f"jobs: {len(runs) - len(unique)} duplicate run(s) of the same resolved spec skipped", file=sys.stderr)
    runs = unique
    if not offline:
        tracking.create_store()
    rate = Rate(runs, cost)
    threads = thread_share(jobs)
    devices = worker_devices(device, jobs, torch.cuda.device_count() if device.type == "cuda" else 0)
    where = ", ".join(f"{n} on {d}" for d, n in sorted(Counter(devices).items())) if len(set(devices)) > 1 \
        else f"on {devices[0]}"
    print(f"jobs: {jobs} runs at a time {where}" + (f", {threads} CPU thread(s) each" if device.type == "cpu"
                                                    else ""), file=sys.stderr, flush=True)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    for d in devices:
        queue.put(d)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init,
                               initargs=(arrays, queue, threads, offline))
    try:
        futures = {pool.submit(_execute, r, force): r for r in runs}
        for done, fut in enumerate(as_completed(futures), 1):
            r = futures[fut]
            try:
                status = fut.result()
            except Exception as e:  # noqa: BLE001 - e.g. a worker killed by the OOM killer: the run resumes later
                status = "failed"
                print(f"{label(r)}: worker failed with {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            counts[status] = counts.get(status, 0) + 1
            rate.done(r, status)
            print(f"[{done}/{len(runs)}] {label(r)}: {status} ({rate.line()})", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)  # no run starts after a Ctrl-C
        stop_workers()
        raise
    pool.shutdown()
    return counts


def stop_workers(grace_s: float = 15.0) -> None:
    """After a Ctrl-C: the workers saw it too and are marking their runs KILLED; one that does not exit in time
    (e.g. it was still starting when the signal came) is terminated, its run left RUNNING to resume."""
    deadline = time.monotonic() + grace_s
    for p in mp.active_children():
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join()
