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

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from harness.batch import task as workers
from harness.batch.cluster import Cluster, check_shared, import_ray, run_units
from harness.batch.cost import Rate, gflops_on_data
from harness.core.data import Arrays, check_batch_fits, load_arrays
from harness.core.devices import check_jobs, pick_device
from harness.core.spec import RunSpec, load_specs, resolve_runs
from harness.errors import SpecError, UserError
from harness.tracking import store as tracking

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


LOCAL = Cluster()


@dataclass(frozen=True)
class Shared:
    """Where every process of a batch finds the same state: a cluster to run on (None: this machine), the
    checkpoint folder and the claim database (None: beside the store, harness/claims.py)."""
    cluster: Cluster = LOCAL
    checkpoint_dir: str | None = None
    claims_db: str | None = None

    def apply(self) -> None:
        """Into this process's environment, which the runner reads and Ray hands to every task."""
        if self.checkpoint_dir:
            os.environ["HARNESS_CHECKPOINT_DIR"] = str(Path(self.checkpoint_dir).resolve())
        if self.claims_db:
            os.environ["HARNESS_CLAIMS_DB"] = self.claims_db


HERE = Shared()


def run_batch(runs: list[RunSpec], data: str, jobs: int, *, download: bool = False, device: str | None = None,
              force: bool = False, offline: str | None = None, no_progress: bool = False,
              label: Label = lambda r: r.run_name, plan: Plan | None = None, title: str = "",
              note: str = "", shared: Shared = HERE, group: int | None = None) -> Batch:
    """Check, load, train, sum up: --jobs is checked, the data loaded and the device chosen once for all runs;
    `plan` may narrow the runs to those still to do; one line at the end counts the outcomes (`title` and `note`
    say whose and what else to know). Bars only on a terminal: in a log file or CI a bar is hundreds of carriage
    returns on one line, so there each evaluation point gets a line of its own instead (as under --no-progress)."""
    check_jobs(jobs)
    shared.apply()
    if jobs > 1 or shared.cluster.address:
        import_ray()  # a missing Ray, or a store one node alone sees, is one line before anything is loaded
    if shared.cluster.address:
        check_shared(offline)
    print(f"{title or 'run'}: {len(runs)} run(s); loading {data}", file=sys.stderr, flush=True)  # the first second
    arrays = load_arrays(data, download=download)
    check_batch_fits(runs, arrays)  # every run's batch against its split of this data, before any MLflow run
    dev = pick_device(device)
    size = check_group(group, jobs, offline, dev, cluster=bool(shared.cluster.address))
    todo = plan(runs, arrays, dev) if plan else runs
    t0 = time.perf_counter()
    counts = execute_all(todo, arrays, dev, jobs, force=force, offline=offline,
                         progress=not no_progress and sys.stderr.isatty(), label=label, cluster=shared.cluster,
                         group=size)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"{title + ': ' if title else ''}{len(todo)} runs: {summary} in {time.perf_counter() - t0:.0f}s{note}",
          file=sys.stderr)
    return Batch(counts, arrays.data_id)


def execute_all(runs: list[RunSpec], arrays: Arrays, device: torch.device, jobs: int = 1, force: bool = False,
                offline: str | None = None, progress: bool = True,
                label: Label = lambda r: r.run_name, cluster: Cluster = LOCAL, group: int = 1) -> dict[str, int]:
    """Run `runs`, `jobs` at a time; returns {status: count}. With jobs > 1 or a cluster they go to Ray and bars
    are off (N bars would interleave): each run logs one line per evaluation point instead. With group > 1 the
    runs that can share a step train together in this process. The time-left estimate weighs each run by its
    GFLOPs on these arrays."""
    cost = partial(gflops_on_data, arrays=arrays)
    if group > 1 and runs:
        return _in_groups(runs, arrays, device, group, force, offline, label, Rate(runs, cost))
    if (jobs == 1 and not cluster.address) or not runs:
        return _in_this_process(runs, arrays, device, force, offline, progress, label, Rate(runs, cost))
    counts: dict[str, int] = {}
    hashes = [r.spec_hash(arrays.data_id) for r in runs]
    unique = [r for i, r in enumerate(runs) if hashes[i] not in hashes[:i]]  # one task per run: the first one
    if len(unique) < len(runs):
        counts["skipped"] = len(runs) - len(unique)
        print(f"jobs: {len(runs) - len(unique)} duplicate run(s) of the same resolved spec skipped", file=sys.stderr)
    if not offline:
        tracking.create_store()
    return _on_ray(unique, arrays, device, jobs, cluster, force, offline, label, Rate(unique, cost), counts)


def _in_this_process(runs: list[RunSpec], arrays: Arrays, device: torch.device, force: bool, offline: str | None,
                     progress: bool, label: Label, rate: Rate) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i, r in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {label(r)}  ({rate.line()})", file=sys.stderr, flush=True)
        status = workers.execute_one(r, arrays, device, force, offline, progress)
        counts[status] = counts.get(status, 0) + 1
        rate.done(r, status)
    return counts


def check_group(group: int | None, jobs: int, offline: str | None, device: torch.device, cluster: bool = False) -> int:
    """The group size: --group, else what measured fastest on this device type (harness.core.grouped.DEFAULT_GROUP)."""
    from harness.core.grouped import default_group

    if group is not None and group < 1:
        raise UserError(f"--group: expected a group size of at least 1, got {group}")
    size = default_group(device) if group is None else group
    if size > 1 and (jobs > 1 or cluster):
        other = "--jobs" if jobs > 1 else "--address"
        raise UserError(f"--group {size}: expected --group 1 with {other} (a group trains in this one process)")
    return size


def _in_groups(runs: list[RunSpec], arrays: Arrays, device: torch.device, size: int, force: bool,
               offline: str | None, label: Label, rate: Rate) -> dict[str, int]:
    """Runs that can share a step (harness.core.grouped.partition), up to `size` at once, in this process; each member
    has its own MLflow run (or --offline folder), as a run alone (harness.batch.grouped)."""
    from harness.batch.grouped import execute_group
    from harness.core.grouped import partition

    counts: dict[str, int] = {}
    for g in partition(runs, size):
        print(f"[group of {len(g)}] " + ", ".join(map(label, g)) + f"  ({rate.line()})", file=sys.stderr, flush=True)
        statuses = execute_group(g, arrays, device, force, Path(offline) if offline else None)
        for r, status in zip(g, statuses, strict=True):
            counts[status] = counts.get(status, 0) + 1
            rate.done(r, status)
    return counts


def units(runs: list[RunSpec]) -> list[list[RunSpec]]:
    """The units of work of a batch: one run each."""
    return [[r] for r in runs]


def _on_ray(runs: list[RunSpec], arrays: Arrays, device: torch.device, jobs: int, cluster: Cluster, force: bool,
            offline: str | None, label: Label, rate: Rate, counts: dict[str, int]) -> dict[str, int]:
    done = [0]

    def on_done(unit: list[RunSpec], statuses: list[str], node: str) -> None:
        for r, status in zip(unit, statuses, strict=True):
            done[0] += 1
            counts[status] = counts.get(status, 0) + 1
            rate.done(r, status)
            where = f" on {node}" if cluster.address or status == "failed" else ""
            print(f"[{done[0]}/{len(runs)}] {label(r)}: {status}{where} ({rate.line()})", file=sys.stderr, flush=True)

    run_units(units(runs), arrays, device, jobs, cluster, force, offline, on_done)
    return counts
