"""A batch of runs, the layer `run` and `table` share: their specs read and checked, the data loaded once and the
runs trained one at a time in this process, or several at once on Ray (harness/batch/cluster.py): on this machine
with `--jobs N`, or over a cluster with `--address`, the lever for a whole table's throughput.

A batch-128 CIFAR ResNet step leaves much of a device idle, and small convolutions scale poorly across threads, so
several one-thread runs can train more images per second in total than one run on every thread (`bench --jobs N`
measures it on the machine at hand; docs/benchmark.md has the figures). Runs are independent (own MLflow run,
own checkpoint keyed by spec_hash, own claim): they share nothing but the device. The unit of work handed to Ray
is a list of runs (`units`), so that runs trained together in one process go as one unit.
A run killed with its worker or node resumes from its checkpoint, retried by Ray or on the next call.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

from harness.batch import task as workers
from harness.batch.cluster import check_shared, import_ray, run_units
from harness.batch.cost import Rate, gflops_on_data
from harness.batch.options import BatchOptions
from harness.core.data import Arrays, check_batch_fits, load_arrays
from harness.core.devices import check_jobs, pick_device
from harness.core.spec import RunSpec
from harness.errors import UserError
from harness.tracking import store as tracking
from harness.tracking.records import export_run
from harness.tracking.status import DONE, Status, summary

Label = Callable[[RunSpec], str]
Plan = Callable[[list[RunSpec], Arrays, torch.device], list[RunSpec]]


@dataclass(frozen=True)
class Batch:
    counts: Counter[Status]
    data_id: str

    @property
    def all_done(self) -> bool:
        """Every run finished now or before: what exit code 0 of `run` and `table` says."""
        return self.counts.keys() <= DONE


@dataclass(frozen=True)
class Told:
    """What a batch's lines say besides the counts: each run's name, whose batch it is, what else to know."""

    label: Label = lambda r: r.run_name
    title: str = ""
    note: str = ""


def run_batch(runs: list[RunSpec], o: BatchOptions, told: Told = Told(), plan: Plan | None = None) -> Batch:
    """Check, load, train, sum up: --jobs is checked, the data loaded and the device chosen once for all runs;
    `plan` may narrow the runs to those still to do; one line at the end counts the outcomes."""
    check_jobs(o.jobs)
    if o.jobs > 1 or o.cluster.address:
        import_ray()  # a missing Ray, or a store one node alone sees, is one line before anything is loaded
    if o.cluster.address:
        check_shared(o)
    dev = pick_device(o.device)  # a bad --device is one line, before anything is said or loaded
    if sys.stderr.isatty():  # a user waiting at a terminal sees the command at work at once; a log gets its lines
        print(f"{told.title or 'run'}: {len(runs)} run(s); loading {o.data}", file=sys.stderr, flush=True)
    arrays = load_arrays(o.data, download=o.download)
    check_batch_fits(runs, arrays)  # every run's batch against its split of this data, before any MLflow run
    o = replace(o, group=check_group(o.group, o.jobs, dev, cluster=bool(o.cluster.address)))
    todo = plan(runs, arrays, dev) if plan else runs
    t0 = time.perf_counter()
    counts = execute_all(todo, arrays, dev, o, told.label)
    print(f"{told.title + ': ' if told.title else ''}{len(todo)} runs: {summary(counts)} in "
          f"{time.perf_counter() - t0:.0f}s{told.note}", file=sys.stderr)
    return Batch(counts, arrays.data_id)


def execute_all(runs: list[RunSpec], arrays: Arrays, device: torch.device, o: BatchOptions,
                label: Label = lambda r: r.run_name) -> Counter[Status]:
    """Run `runs`, `o.jobs` at a time, `o.group` (resolved, check_group) together. With jobs > 1 or a cluster they
    go to Ray and bars are off (N bars would interleave): each run logs one line per evaluation point instead.
    With group > 1 the runs that can share a step train together in this process. The time-left estimate weighs
    each run by its GFLOPs on these arrays."""
    cost = partial(gflops_on_data, arrays=arrays)
    if (o.group or 1) > 1 and runs:
        return _in_groups(runs, arrays, device, o, label, Rate(runs, cost))
    if (o.jobs == 1 and not o.cluster.address) or not runs:
        return _in_this_process(runs, arrays, device, o, label, Rate(runs, cost))
    counts: Counter[Status] = Counter()
    hashes = [r.spec_hash(arrays.data_id) for r in runs]
    unique = [r for i, r in enumerate(runs) if hashes[i] not in hashes[:i]]  # one task per run: the first one
    if len(unique) < len(runs):
        counts[Status.SKIPPED] = len(runs) - len(unique)
        print(f"jobs: {len(runs) - len(unique)} duplicate run(s) of the same resolved spec skipped", file=sys.stderr)
    if not o.offline:
        tracking.create_store()
    return _on_ray(unique, arrays, device, o, label, Rate(unique, cost), counts)


def _in_this_process(runs: list[RunSpec], arrays: Arrays, device: torch.device, o: BatchOptions, label: Label,
                     rate: Rate) -> Counter[Status]:
    counts: Counter[Status] = Counter()
    for i, r in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {label(r)}  ({rate.line()})", file=sys.stderr, flush=True)
        status = workers.execute_one(r, arrays, device, o)
        counts[status] += 1
        rate.done(r, status)
        publish(r, status, o, arrays.data_id)
    return counts


def publish(r: RunSpec, status: Status, o: BatchOptions, data_id: str) -> None:
    """With --publish, a run's record goes to results/ the moment it finishes, not when the whole batch ends."""
    if o.publish is not None and o.offline is None and status == Status.FINISHED:
        export_run(o.publish, r.group, r.spec_hash(data_id))


def check_group(group: int | None, jobs: int, device: torch.device, cluster: bool = False) -> int:
    """The group size: --group, else what measured fastest on this device type (harness.core.grouped.DEFAULT_GROUP)."""
    from harness.core.grouped import default_group

    if group is not None and group < 1:
        raise UserError(f"--group: expected a group size of at least 1, got {group}")
    size = default_group(device) if group is None else group
    if size > 1 and (jobs > 1 or cluster):
        other = "--jobs" if jobs > 1 else "--address"
        raise UserError(f"--group {size}: expected --group 1 with {other} (a group trains in this one process)")
    return size


def _in_groups(runs: list[RunSpec], arrays: Arrays, device: torch.device, o: BatchOptions, label: Label,
               rate: Rate) -> Counter[Status]:
    """Runs that can share a step (harness.core.grouped.partition), up to `o.group` at once, in this process; each
    member has its own MLflow run (or --offline folder), as a run alone (harness.batch.grouped)."""
    from harness.batch.grouped import execute_group
    from harness.core.grouped import partition

    counts: Counter[Status] = Counter()
    for g in partition(runs, o.group):
        print(f"[group of {len(g)}] " + ", ".join(map(label, g)) + f"  ({rate.line()})", file=sys.stderr, flush=True)
        for r, status in zip(g, execute_group(g, arrays, device, o), strict=True):
            counts[status] += 1
            rate.done(r, status)
            publish(r, status, o, arrays.data_id)
    return counts


def units(runs: list[RunSpec]) -> list[list[RunSpec]]:
    """The units of work of a batch: one run each."""
    return [[r] for r in runs]


def _on_ray(runs: list[RunSpec], arrays: Arrays, device: torch.device, o: BatchOptions, label: Label, rate: Rate,
            counts: Counter[Status]) -> Counter[Status]:
    done = [0]

    def on_done(unit: list[RunSpec], statuses: list[Status], node: str) -> None:
        for r, status in zip(unit, statuses, strict=True):
            done[0] += 1
            counts[status] += 1
            rate.done(r, status)
            publish(r, status, o, arrays.data_id)
            where = f" on {node}" if o.cluster.address or status == Status.FAILED else ""
            print(f"[{done[0]}/{len(runs)}] {label(r)}: {status}{where} ({rate.line()})", file=sys.stderr, flush=True)

    run_units(units(runs), arrays, device, o, on_done)
    return counts
