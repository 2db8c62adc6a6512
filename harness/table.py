"""`make reproduce-table`: every default spec, a plan with an ETA first, finished runs skipped, then reports.

The ETA comes from a short measured step on this device (seconds per training GFLOP) times each pending
run's training and evaluation FLOPs, so it holds for any mix of depths and batch sizes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from harness import tracking
from harness.cost import gflops_on_data, seconds_per_gflop
from harness.data import Arrays
from harness.errors import SpecError
from harness.spec import RunSpec, expand_paths, load_spec, resolve_runs

DEFAULT_FOLDERS = ("experiments/table6", "experiments/ablations", "experiments/ladder", "experiments/tuned")


def collect_runs(folders, overrides, budget, include_heavy=False) -> tuple[list[RunSpec], list[str]]:
    """All runs of the valid specs, and one error line per invalid spec (those are skipped, not fatal)."""
    runs: list[RunSpec] = []
    errors: list[str] = []
    paths = expand_paths([f for f in folders if Path(f).exists()])
    if not paths:
        raise SpecError(f"{' '.join(map(str, folders))}: no spec files found (expected folders of .yaml specs)")
    for path in paths:
        try:
            spec = load_spec(path, overrides)
        except SpecError as e:
            errors.append(str(e))
            print(f"error: {e}", file=sys.stderr)
            continue
        if spec.heavy and not include_heavy:
            continue
        runs += resolve_runs(path, spec, budget)
    return runs, errors


def plan(runs: list[RunSpec], arrays: Arrays, device: torch.device) -> list[RunSpec]:
    """Print what will run and how long it should take; returns the runs still to do."""
    c = tracking.client()
    todo, done = [], 0
    for r in runs:
        found = tracking.find_run(c, tracking.experiment_id(c, r.group), r.spec_hash(arrays.data_id))
        if found is not None and (found.info.status == "FINISHED" or found.data.tags.get("failure") == "diverged"):
            done += 1
        else:
            todo.append(r)
    spg = seconds_per_gflop(device) if todo else 0.0
    eta = sum(gflops_on_data(r, arrays) for r in todo) * spg
    print(f"plan: {len(runs)} runs in total, {done} already done, {len(todo)} to do; "
          f"ETA {eta / 60:.0f} min on {device} one run at a time (measured {1 / spg if spg else 0:.1f} GFLOP/s "
          "training rate; each finished run re-estimates the time left from the batch's own rate)",
          file=sys.stderr, flush=True)
    return todo


def main(a) -> int:
    from harness.data import load_arrays
    from harness.devices import check_jobs, pick_device
    from harness.parallel import execute_all, show_bars

    check_jobs(a.jobs)
    missing = [f for f in a.folders if not Path(f).exists()]  # named ones must exist; experiments/tuned need not
    if missing:
        raise SpecError(f"{missing[0]}: spec folder not found (expected a folder of .yaml specs or a spec file)")
    runs, bad_specs = collect_runs(a.folders or DEFAULT_FOLDERS, a.overrides, a.budget, a.include_heavy)
    arrays = load_arrays(a.data, download=a.download)
    device = pick_device(a.device)
    todo = plan(runs, arrays, device)
    t0 = time.perf_counter()
    counts = execute_all(todo, arrays, device, a.jobs, progress=show_bars(a),
                         label=lambda r: f"{r.group}/{r.run_name}")
    print(f"table: {len(todo)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) +
          f" in {time.perf_counter() - t0:.0f}s" + (f"; {len(bad_specs)} invalid spec(s) skipped, see the "
                                                   "error lines above" if bad_specs else ""), file=sys.stderr)
    if not a.no_report:  # the report of this table's runs, not of whatever finished last
        from harness.report import main as report_main

        a.report_budget, a.data_id = a.budget, arrays.data_id
        report_main(a)
    if bad_specs:
        return 2
    return 0 if counts.keys() <= {"finished", "skipped"} else 1
