"""`make reproduce-table`: every default spec, a plan with an ETA first, finished runs skipped.

The ETA comes from a short measured step on this device (seconds per training GFLOP) times each pending
run's training and evaluation FLOPs, so it holds for any mix of depths and batch sizes. An invalid spec among the
defaults is named and skipped rather than fatal: one typo must not hold back a day of training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import torch

from harness.batch.cost import gflops_on_data, seconds_per_gflop
from harness.batch.dispatch import Told, run_batch
from harness.batch.options import BatchOptions
from harness.core.campaign_file import campaign_runs
from harness.core.data import Arrays
from harness.core.groups import GROUPS
from harness.core.spec import Collected, RunSpec, collect_runs
from harness.errors import SpecError
from harness.tracking import store as tracking
from harness.tracking.experiments import find_group_run
from harness.tracking.records import committed

DEFAULT_FOLDERS = tuple(str(g.folder) for g in GROUPS if g.trained)


class TableResult(NamedTuple):
    code: int  # 0 all done, 1 a run diverged or failed, 2 an invalid spec was skipped
    data_id: str  # the data the runs trained on: which campaign a report of this table is of


def planner(records: Path | None):
    """The plan of a table: a run is done when the store holds it finished (or diverged) or when `records` (the
    committed results/, None under --force) holds its record, so a fresh machine trains only what no one has."""

    def plan(runs: list[RunSpec], arrays: Arrays, device: torch.device) -> list[RunSpec]:
        """Print what will run and how long it should take; returns the runs still to do."""
        c = tracking.client()
        todo, in_store, in_records = [], 0, 0
        for r in runs:
            spec_hash = r.spec_hash(arrays.data_id)
            found = find_group_run(c, r.group, spec_hash)
            if found is not None and (found.info.status == "FINISHED" or found.data.tags.get("failure") == "diverged"):
                in_store += 1
            elif records is not None and committed(records, r.group, r.run_name, spec_hash):
                in_records += 1
            else:
                todo.append(r)
        spg = seconds_per_gflop(device) if todo else 0.0
        eta = sum(gflops_on_data(r, arrays) for r in todo) * spg
        from_records = f" ({in_records} of them by their records in {records}/)" if in_records else ""
        print(f"plan: {len(runs)} runs in total, {in_store + in_records} already done{from_records}, {len(todo)} to "
              f"do; ETA {eta / 60:.0f} min on {device} one run at a time (measured {1 / spg if spg else 0:.1f} GFLOP/s "
              "training rate; each finished run re-estimates the time left from the batch's own rate)",
              file=sys.stderr, flush=True)
        if todo:
            print(f"plan: to do, in this order: {', '.join(f'{r.group}/{r.run_name}' for r in todo)}", file=sys.stderr)
        return todo

    return plan


def table(folders: list[str], o: BatchOptions, overrides: list[str] = (), budget: float = 1.0,
          include_heavy: bool = False, campaign: str | None = None, records: Path | None = None) -> TableResult:
    """Train what is left of `folders` (default: DEFAULT_FOLDERS, those that exist), or of the campaign file
    `campaign` (harness.core.campaign_file: its budget, overrides, specs and seeds, in its order); a run whose
    record `records` (results/) holds is done unless o.force."""
    found = Collected(campaign_runs(campaign, overrides), [], 1) if campaign else \
        _folder_runs(folders, overrides, budget, include_heavy)
    found = found._replace(runs=tuned_at_their_budget(found.runs))
    for e in found.errors:
        print(f"error: {e}", file=sys.stderr)
    bad = len(found.errors)
    note = f"; {bad} invalid spec(s) skipped, see the error lines above" if bad else ""
    batch = run_batch(found.runs, o, Told(lambda r: f"{r.group}/{r.run_name}", "table", note),
                      planner(None if o.force else records))
    return TableResult(2 if bad else 0 if batch.all_done else 1, batch.data_id)


def tuned_at_their_budget(runs: list[RunSpec]) -> list[RunSpec]:
    """The runs less those of a tuned spec asked for at another budget than its study's: a schedule tuned in 64
    iterations says nothing of 64k. Each one left out is named with where its schedule came from."""
    kept, said = [], set()
    for r in runs:
        t = r.spec.tuned
        if t is None or t.budget == r.budget:
            kept.append(r)
        elif (r.group, r.name) not in said:
            said.add((r.group, r.name))
            print(f"table: skipped {r.group}/{r.name}: its schedule is the best of study '{t.study}' ({t.trials} "
                  f"trials at budget {t.budget:g} on {t.data}, validation error {t.val_error:.2f} %), not of budget "
                  f"{r.budget:g}; `harness run {r.source_file} --budget {r.budget:g}` trains it anyway",
                  file=sys.stderr)
    return kept


def _folder_runs(folders: list[str], overrides: list[str], budget: float, include_heavy: bool) -> Collected:
    missing = [f for f in folders if not Path(f).exists()]  # named ones must exist; experiments/tuned need not
    if missing:
        raise SpecError(f"{missing[0]}: spec folder not found (expected a folder of .yaml specs or a spec file)")
    folders = list(folders or DEFAULT_FOLDERS)
    found = collect_runs([f for f in folders if Path(f).exists()], overrides, budget, include_heavy)
    if not found.files:
        raise SpecError(f"{' '.join(folders)}: no spec files found (expected folders of .yaml specs)")
    return found
