"""A batch of runs, the layer `run` and `table` share: their specs read and checked, the data loaded once and the
runs trained one at a time in this process or several at once on one device (or dealt over several GPUs), the
lever for a whole table's throughput.

A batch-128 CIFAR ResNet step leaves much of a device idle. On a 2-core CPU, two runs with one thread each
trained 1.1-1.25x more images per second in total than one run with both threads (`bench --jobs 2` measures
it on the machine at hand): small convolutions scale poorly across threads. Not measured on a GPU yet.
Runs are independent (own MLflow run, own checkpoint keyed by spec_hash): they share nothing but the device.

Workers (harness/workers.py) are spawned processes, never forked: a forked child of a process that has touched CUDA
cannot use it. Each gets the CPU threads of the parent divided by the number of jobs. On a machine with several GPUs
and `--device cuda` (or none), each worker owns one GPU for its life, the workers dealt round-robin over the GPUs,
so `--jobs 8` on four GPUs trains two runs on each; `--device cuda:1` keeps every worker on that one GPU. A run
killed with its worker resumes from its checkpoint on the next call, exactly as in one process.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch

from harness import tracking, workers
from harness.cost import Rate, gflops_on_data
from harness.data import Arrays, load_arrays
from harness.devices import check_jobs, pick_device, thread_share, worker_devices
from harness.errors import SpecError, UserError
from harness.spec import RunSpec, load_specs, resolve_runs

Label = Callable[[RunSpec], str]
Plan = Callable[[list[RunSpec], Arrays, torch.device], list[RunSpec]]

class Collected(NamedTuple):
    runs: list[RunSpec]
    errors: list[str]  # one line per invalid spec
    files: int  # spec files read, valid or not


def collect_runs(paths: list[str], overrides: list[str], budget: float, include_heavy: bool = True) -> Collected:
    """The runs of every valid spec under `paths` and one error line per invalid spec; what to do with those is
    the command's to say (`run` stops, `table` goes on without them). A bad --budget is the one error every spec
    would share: it stops here, as one line after the specs' own."""
    specs, errors = load_specs(paths, overrides)
    try:
        runs = [r for path, spec in specs if include_heavy or not spec.heavy for r in resolve_runs(path, spec, budget)]
    except SpecError as e:
        raise SpecError("\nerror: ".join([*errors, str(e)])) from None
    return Collected(runs, errors, len(specs) + len(errors))


@dataclass(frozen=True)
class Batch:
    counts: dict[str, int]  # status -> runs
    data_id: str

    @property
    def all_done(self) -> bool:
        """Every run finished now or before: what exit code 0 of `run` and `table` says."""
        return self.counts.keys() <= {"finished", "skipped"}


def run_batch(runs: list[RunSpec], data: str, jobs: int, *, download: bool = False, device: str | None = None,
              force: bool = False, offline: str | None = None, no_progress: bool = False,
              label: Label = lambda r: r.run_name, plan: Plan | None = None, title: str = "",
              note: str = "", group: int | None = None) -> Batch:
    """Check, load, train, sum up: --jobs is checked, the data loaded and the device chosen once for all runs;
    `plan` may narrow the runs to those still to do; one line at the end counts the outcomes (`title` and `note`
    say whose and what else to know). Bars only on a terminal: in a log file or CI a bar is hundreds of carriage
    returns on one line, so there each evaluation point gets a line of its own instead (as under --no-progress)."""
    check_jobs(jobs)
    arrays = load_arrays(data, download=download)
    dev = pick_device(device)
    size = check_group(group, jobs, offline, dev)
    todo = plan(runs, arrays, dev) if plan else runs
    t0 = time.perf_counter()
    counts = execute_all(todo, arrays, dev, jobs, force=force, offline=offline,
                         progress=not no_progress and sys.stderr.isatty(), label=label, group=size)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"{title + ': ' if title else ''}{len(todo)} runs: {summary} in {time.perf_counter() - t0:.0f}s{note}",
          file=sys.stderr)
    return Batch(counts, arrays.data_id)


def execute_all(runs: list[RunSpec], arrays: Arrays, device: torch.device, jobs: int = 1, force: bool = False,
                offline: str | None = None, progress: bool = True,
                label: Label = lambda r: r.run_name, group: int = 1) -> dict[str, int]:
    """Run `runs`, `jobs` at a time; returns {status: count}. With jobs > 1 they go to spawned workers and bars are
    off (N bars would interleave): each worker logs one line per evaluation point instead. The time-left estimate
    weighs each run by its GFLOPs on these arrays."""
    cost = partial(gflops_on_data, arrays=arrays)
    if group > 1 and runs:
        return _in_groups(runs, arrays, device, group, force, label, Rate(runs, cost))
    if jobs == 1 or not runs:
        return _in_this_process(runs, arrays, device, force, offline, progress, label, Rate(runs, cost))
    counts: dict[str, int] = {}
    hashes = [r.spec_hash(arrays.data_id) for r in runs]
    unique = [r for i, r in enumerate(runs) if hashes[i] not in hashes[:i]]  # one worker per run: the first one
    if len(unique) < len(runs):
        counts["skipped"] = len(runs) - len(unique)
        print(f"jobs: {len(runs) - len(unique)} duplicate run(s) of the same resolved spec skipped", file=sys.stderr)
    if not offline:
        tracking.create_store()
    return _in_workers(unique, arrays, device, jobs, force, offline, label, Rate(unique, cost), counts)


def _in_this_process(runs: list[RunSpec], arrays: Arrays, device: torch.device, force: bool, offline: str | None,
                     progress: bool, label: Label, rate: Rate) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i, r in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {label(r)}  ({rate.line()})", file=sys.stderr, flush=True)
        status = workers.execute_one(r, arrays, device, force, offline, progress)
        counts[status] = counts.get(status, 0) + 1
        rate.done(r, status)
    return counts


def check_group(group: int | None, jobs: int, offline: str | None, device: torch.device) -> int:
    """The group size: --group, else what measured fastest on this device type (harness.group.DEFAULT_GROUP)."""
    from harness.group import default_group

    if group is not None and group < 1:
        raise UserError(f"--group: expected a group size of at least 1, got {group}")
    size = default_group(device) if group is None else group
    if size > 1 and (jobs > 1 or offline):
        raise UserError(f"--group {size}: expected --group 1 with {'--jobs' if jobs > 1 else '--offline'} "
                        "(groups train in this process, into MLflow)")
    return size


def _in_groups(runs: list[RunSpec], arrays: Arrays, device: torch.device, size: int, force: bool, label: Label,
               rate: Rate) -> dict[str, int]:
    """Runs that can share a step (harness.group.partition), up to `size` at once, in this process; each member
    has its own MLflow run, as in one run (harness.group_runner)."""
    from harness.group import partition
    from harness.group_runner import execute_group

    counts: dict[str, int] = {}
    for g in partition(runs, size):
        print(f"[group of {len(g)}] " + ", ".join(map(label, g)) + f"  ({rate.line()})", file=sys.stderr, flush=True)
        for r, status in zip(g, execute_group(g, arrays, device, force, progress=False), strict=True):
            counts[status] = counts.get(status, 0) + 1
            rate.done(r, status)
    return counts


def _in_workers(runs: list[RunSpec], arrays: Arrays, device: torch.device, jobs: int, force: bool,
                offline: str | None, label: Label, rate: Rate, counts: dict[str, int]) -> dict[str, int]:
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
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=workers.start,
                               initargs=(arrays, queue, threads, offline))
    try:
        futures = {pool.submit(workers.execute, r, force): r for r in runs}
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
