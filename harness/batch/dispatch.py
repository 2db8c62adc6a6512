"""A batch of runs, the layer `run` and `table` share: their specs read and checked, the data loaded once and the
runs trained one at a time in this process, or several at once on Ray (harness/batch/cluster.py): on this machine
with `--jobs N`, or over a cluster with `--address`, the lever for a whole table's throughput.

A batch-128 CIFAR ResNet step leaves much of a device idle, and small convolutions scale poorly across threads, so
several one-thread runs can train more images per second in total than one run on every thread (`bench --jobs N`
measures it on the machine at hand; docs/benchmark.md has the figures). Runs are independent (own MLflow run,
own checkpoint keyed by spec_hash, own claim): they share nothing but the device. Ray gets one task per run.
A run killed with its worker or node resumes from its checkpoint, retried by Ray or on the next call.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import torch

from harness.batch.cluster import check_shared, import_ray, run_tasks
from harness.batch.cost import Rate, gflops_on_data
from harness.batch.fastest import chosen, on_path
from harness.batch.life import live
from harness.batch.options import BatchOptions
from harness.core.data import Arrays, check_batch_fits, load_arrays
from harness.core.devices import check_jobs, pick_device
from harness.core.grouped import default_group, partition
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
    todo = plan(runs, arrays, dev) if plan else runs
    if o.fastest is not None and todo:
        o, todo = take_fastest(o, todo, dev)
    o = replace(o, group=check_group(o.group, o.jobs, dev, cluster=bool(o.cluster.address)))
    t0 = time.perf_counter()
    counts = execute_all(todo, arrays, dev, o, told.label)
    print(f"{told.title + ': ' if told.title else ''}{len(todo)} runs: {summary(counts)} in "
          f"{time.perf_counter() - t0:.0f}s{told.note}", file=sys.stderr)
    return Batch(counts, arrays.data_id)


def take_fastest(o: BatchOptions, runs: list[RunSpec], device: torch.device) -> tuple[BatchOptions, list[RunSpec]]:
    """--fastest: the options and runs on the path bench measured fastest on this CPU (harness.batch.fastest)."""
    path = chosen(o.fastest, device, runs, cluster=bool(o.cluster.address))
    if path is None:
        return o, runs
    if path.jobs > 1:
        import_ray()
    return replace(o, jobs=path.jobs), [r.model_copy(update={"spec": on_path(r.spec, path)}) for r in runs]


def execute_all(runs: list[RunSpec], arrays: Arrays, device: torch.device, o: BatchOptions,
                label: Label = lambda r: r.run_name) -> Counter[Status]:
    """Run `runs`, `o.jobs` at a time, `o.group` (resolved, check_group) together. With jobs > 1 or a cluster they
    go to Ray and bars are off (N bars would interleave): each run logs one line per evaluation point instead.
    With group > 1 the runs that can share a step train together in this process. Each run lives the one life of a
    run (harness.batch.life) wherever it trains. The time-left estimate weighs each run by its GFLOPs on these
    arrays."""
    if (o.jobs == 1 and not o.cluster.address) or not runs:
        return _in_this_process(runs, arrays, device, o, label)
    hashes = [r.spec_hash(arrays.data_id) for r in runs]
    unique = [r for i, r in enumerate(runs) if hashes[i] not in hashes[:i]]  # one task per run: the first one
    tally = Tally(Rate(unique, partial(gflops_on_data, arrays=arrays)), o, arrays.data_id)
    if len(unique) < len(runs):
        tally.counts[Status.SKIPPED] = len(runs) - len(unique)
        print(f"jobs: {len(runs) - len(unique)} duplicate run(s) of the same resolved spec skipped", file=sys.stderr)
    if not o.offline:
        tracking.create_store()

    def on_done(r: RunSpec, status: Status, node: str) -> None:
        tally.add(r, status)
        where = f" on {node}" if o.cluster.address or status == Status.FAILED else ""
        print(f"[{tally.ended}/{len(unique)}] {label(r)}: {status}{where} ({tally.rate.line()})", file=sys.stderr,
              flush=True)

    run_tasks(unique, arrays, device, o, on_done)
    return tally.counts


@dataclass
class Tally:
    """What a batch does as each run ends, wherever it trained: count it, re-estimate the time left and, with
    --publish, write its record to results/ at once (not when the whole batch ends)."""

    rate: Rate
    o: BatchOptions
    data_id: str
    counts: Counter[Status] = field(default_factory=Counter)
    ended: int = 0

    def add(self, r: RunSpec, status: Status) -> None:
        self.ended += 1
        self.counts[status] += 1
        self.rate.done(r, status)
        if self.o.publish is not None and self.o.offline is None and status == Status.FINISHED:
            export_run(self.o.publish, r.group, r.spec_hash(self.data_id))


def _in_this_process(runs: list[RunSpec], arrays: Arrays, device: torch.device, o: BatchOptions,
                     label: Label) -> Counter[Status]:
    """One run at a time, or with group > 1 the runs that can share a step (harness.core.grouped.partition), up to
    `o.group` at once; each member has its own MLflow run (or --offline folder), as a run alone."""
    tally = Tally(Rate(runs, partial(gflops_on_data, arrays=arrays)), o, arrays.data_id)
    groups = partition(runs, o.group) if (o.group or 1) > 1 else [[r] for r in runs]
    for g in groups:
        head = f"[{tally.ended + 1}/{len(runs)}] {label(g[0])}" if len(g) == 1 else \
            f"[group of {len(g)}] " + ", ".join(map(label, g))
        print(f"{head}  ({tally.rate.line()})", file=sys.stderr, flush=True)
        for r, status in zip(g, live(g, arrays, device, o.destination), strict=True):
            tally.add(r, status)
    return tally.counts


def check_group(group: int | None, jobs: int, device: torch.device, cluster: bool = False) -> int:
    """The group size: --group, else what measured fastest on this device type (harness.core.grouped.DEFAULT_GROUP)."""
    if group is not None and group < 1:
        raise UserError(f"--group: expected a group size of at least 1, got {group}")
    size = default_group(device) if group is None else group
    if size > 1 and (jobs > 1 or cluster):
        other = "--jobs" if jobs > 1 else "--address"
        raise UserError(f"--group {size}: expected --group 1 with {other} (a group trains in this one process)")
    return size


