"""What the committed records measure of a factor: pairs of settings that differ in it alone, and whole
combinations of a user's departures set against the paper's recipe at the same images seen.

A setting is one spec's finished and failed runs (its seeds) on one data file at one budget, read from results/
(the records a fresh clone has; no MLflow store). Its factor values come from the record's resolved spec
(harness.core.factors), so a pair is found by what the runs trained, whatever the specs were called.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import yaml

from harness.core import factors as F
from harness.core.data_tag import DataTag
from harness.core.schema import Spec
from harness.report.stats import Summary, summarize, verdict
from harness.tracking.importing import RUN_KEYS, as_current, record_files


@dataclass(frozen=True)
class Setting:
    ref: str  # group/name of its records
    data_id: str
    data: DataTag
    budget: float
    spec: Spec  # the resolved spec of its first record (iterations at its budget)
    values: dict[str, F.Value]
    runs: pd.DataFrame  # one row per record: test_error, status, device, commit, failure, record, ...

    @cached_property
    def s(self) -> Summary:
        """Computed once: pairs are sorted and compared by it many times."""
        return summarize(self.runs)


@dataclass(frozen=True)
class Pair:
    """`after` against `before`: what moving `factors` from the paper's values to the user's costs there."""

    factors: tuple[str, ...]
    before: Setting
    after: Setting
    background: int  # factors outside `factors` in which `before` departs from the paper's recipe, the split and
    # the length aside (a run's data and budget, said beside its figure)

    @property
    def delta(self) -> float:
        return self.after.s.mean - self.before.s.mean

    @property
    def noise(self) -> str:
        return verdict(self.after.runs, self.before.runs, (self.after.ref, self.before.ref))


def _row(path: Path, rec: dict) -> dict:
    tests = [h["test_error"] for h in rec.get("history", []) if "test_error" in h]
    tags = rec["tags"]
    final = rec.get("final", {}).get("test_error", math.nan)
    return {"record": str(path), "status": rec["status"], "test_error": final,
            "best_test_error_over_training": min(tests, default=math.nan), "device": tags.get("device", ""),
            "commit": tags.get("git_commit", ""), "failure": tags.get("failure", ""),
            "spec_hash": tags.get("spec_hash", ""), "start": rec.get("start_time"), "end": rec.get("end_time")}


def load_settings(results: Path) -> tuple[list[Setting], list[str]]:
    """The settings of every record under `results`, and one line per record whose spec no longer reads."""
    grouped: dict[tuple, list] = {}
    skipped = []
    for path in record_files([results]) if any(results.rglob("*.json")) else []:
        rec = as_current(json.loads(path.read_text()))
        body = yaml.safe_load(rec["spec_yaml"]) or {}
        try:
            spec = Spec.model_validate({k: v for k, v in body.items() if k not in RUN_KEYS})
        except ValueError as e:
            skipped.append(f"{path}: its spec no longer validates ({str(e).splitlines()[0]}); left out")
            continue
        values = F.values_of(spec)
        ref = f"{rec['group']}/{rec['tags'].get('spec_name', spec.name)}"
        key = (ref, rec["tags"].get("data_id", ""), float(body["budget"]), tuple(values.items()))
        grouped.setdefault(key, []).append((spec, rec["tags"].get("data", ""), _row(path, rec)))
    settings = [Setting(ref, data_id, DataTag.read(rows[0][1]), budget, rows[0][0], dict(values),
                        pd.DataFrame([r for _, _, r in rows]))
                for (ref, data_id, budget, values), rows in grouped.items()]
    return [s for s in settings if s.s.n], skipped


def _others_agree(a: Setting, b: Setting, skip: tuple[str, ...]) -> bool:
    return all(F.equal(f, a.values, b.values) for f in F.NAMES if f not in skip)


def _rank(p: Pair) -> tuple:
    """Nearest the paper's recipe first, then the most seeds, then the longest run."""
    return p.background, -min(p.before.s.n, p.after.s.n), -p.before.budget


def one_factor(settings: list[Setting], factor: str, paper: dict[str, F.Value],
               yours: dict[str, F.Value]) -> list[Pair]:
    """Every pair of settings on one data file that differ in `factor` alone, by the change paper -> yours."""
    pairs = [Pair((factor,), b, a, sum(not F.equal(f, b.values, paper) for f in F.NAMES
                                       if f != factor and f not in F.CONTEXT))
             for b in settings for a in settings
             if a is not b and a.data_id == b.data_id and F.same_change(factor, paper, yours, b.values, a.values)
             and _others_agree(a, b, (factor,))]
    return sorted(pairs, key=_rank)


def taking_together(settings: list[Setting], departing: list[str], paper: dict[str, F.Value],
                    yours: dict[str, F.Value]) -> list[tuple[tuple[str, ...], Setting]]:
    """Settings that take two or more of the user's departures together and the paper's values elsewhere (the
    split and the length aside: a context, matched by images seen where they are compared)."""
    moved = [f for f in departing if f not in F.CONTEXT]
    found = []
    for a in settings:
        taken = tuple(f for f in moved if a.values[f] == yours[f])
        if len(taken) >= 2 and all(a.values[f] == paper[f] for f in F.NAMES if f not in (*taken, *F.CONTEXT)):
            found.append((taken, a))
    return found


def combinations(together: list[tuple[tuple[str, ...], Setting]], settings: list[Setting],
                 paper: dict[str, F.Value]) -> list[Pair]:
    """Each of `together` against the paper's recipe on the same data at the same images seen (their splits may
    differ, and the page says so), the most factors first."""
    found = [Pair(taken, b, a, 0) for taken, a in together for b in settings
             if b.data_id == a.data_id and F.same_length(a.values, b.values)
             and all(b.values[f] == paper[f] for f in F.NAMES if f not in F.CONTEXT)]
    return sorted(found, key=lambda p: (-len(p.factors), *_rank(p)))
