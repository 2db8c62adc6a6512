"""The campaign that would measure a user's unmeasured departures: one run per factor, each the one-factor move from
the paper's recipe (harness.core.factors.moved_to), its baseline beside it, at the why-campaign's budget and seeds;
and what it costs on this machine, at the rate the committed records kept here.

The file is an ordinary campaign (`table --campaign FILE`), so finished runs are skipped, a killed one resumes and
`--publish` commits the records that the next `diagnose` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from harness.batch.cost import run_gflops
from harness.core import factors as F
from harness.core.campaign_file import campaign_runs
from harness.core.devices import device_name, thread_share
from harness.core.spec import RunSpec, Spec, load_spec
from harness.report.evidence import Setting
from harness.report.why import why_campaigns

CPU_JOBS = 2  # runs at once on a 2-core CPU, as `make cpu-table` trains them (the bench's fastest)


@dataclass(frozen=True)
class Recipe:
    """Where one-factor runs start: the paper's spec, and the base the ablations measure from (the paper's recipe
    with a validation split, which a plateau schedule needs); a factor the base holds at another value than the
    paper (the split) starts from the paper's spec itself."""

    paper: Path
    base: Path
    budget: float
    overrides: list[str]  # the why-campaign's: evaluation points, the fast path
    seeds: list[int]


def why_recipe(paper: Path, base: Path, budget: float | None, seeds: list[int]) -> Recipe:
    """The why-campaign's budget and overrides (the first campaign file with a `why:` section), or budget 1/8."""
    for _, camp in why_campaigns(Path()):
        return Recipe(paper, base, budget or camp.budget, camp.overrides, seeds)
    return Recipe(paper, base, budget or 0.125, [], seeds)


def _entry(spec: Path, seeds: list[int], factor: str | None = None, lines: list[str] = ()) -> dict:
    entry = {"spec": str(spec), "seeds": list(seeds)}  # a list of its own: YAML writes no anchors
    if factor:
        digest = hashlib.sha256(json.dumps(lines).encode()).hexdigest()[:6]
        entry.update(name=f"{factor.replace(' ', '_')}_{digest}", set=list(lines))
    return entry


def campaign_for(factors: list[str], yours: Spec, recipe: Recipe, title: str) -> dict:
    """A campaign file's content: per factor its baseline (once) and the one-factor run."""
    paper = load_spec(recipe.paper)
    base = load_spec(recipe.base)
    entries: list[dict] = []
    for f in factors:
        start, path = (base, recipe.base) if F.equal(f, F.values_of(base), F.values_of(paper)) else \
            (paper, recipe.paper)
        baseline = _entry(path, recipe.seeds)
        if baseline not in entries:
            entries.append(baseline)
        entries.append(_entry(path, recipe.seeds, f, F.moved_to(f, start, yours, paper)))
    return {"description": f"diagnose: the one-factor runs that would measure what {title} leaves unmeasured: "
                           f"{', '.join(factors)}", "budget": recipe.budget, "overrides": recipe.overrides,
            "runs": entries}


def write_campaign(path: Path, content: dict) -> list[RunSpec]:
    """Write the campaign file whole (beside, then renamed) once it resolves as `table` will resolve it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# Written by `python -m harness diagnose`; run it with `python -m harness table --campaign "
                   f"{path}`.\n" + yaml.safe_dump(content, sort_keys=False, width=120, allow_unicode=True))
    try:
        runs = campaign_runs(tmp)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return runs


@dataclass(frozen=True)
class Cost:
    runs: int  # runs of the campaign no record holds yet
    seconds: float | None  # their training time one after another here (None: no record measured this machine)
    device: str  # the device whose records gave the rate
    rate_from: int  # records the rate is the median of
    other_nets: bool = False  # some run has no record of its own architecture here: it took other nets' rate


def _gflops(spec: Spec, budget: float, data_train: int, data_test: int) -> float:
    run = RunSpec(spec=spec, group="g", name="n", seed=0, budget=budget, source_file="")
    n_val = round(data_train * (spec.data.val_fraction or 0)) or (spec.data.val_size or 0)
    return run_gflops(run, n_val, data_test)


def cost_here(runs: list[RunSpec], settings: list[Setting], data_id: str, pool: tuple[int, int]) -> Cost:
    """Seconds per GFLOP of the records trained on this CPU at the threads a run gets with CPU_JOBS at once (wall
    time from the record's start to end, evaluations included), times the campaign's runs' GFLOPs. A CPU runs one
    net's FLOPs faster than another's (a wide net's convolutions use it better), so a run takes the median of its
    own architecture's records where there are some, else of all of them."""
    here = device_name(torch.device("cpu")).rsplit(" x", 1)[0] + f" x{thread_share(CPU_JOBS)} threads"
    done = {h for s in settings for h in s.runs.spec_hash}
    todo = [r for r in runs if r.spec_hash(data_id) not in done]
    rates: dict[str, list[float]] = {}
    for s in settings:
        ok = s.runs[(s.runs.status == "FINISHED") & (s.runs.device == here) & s.runs.end.notna()]
        if len(ok):
            g = _gflops(s.spec, 1.0, s.data.train + s.data.val, s.data.test)
            rates.setdefault(s.spec.model.arch, []).extend(
                (end - start) / 1000 / g for start, end in zip(ok.start, ok.end, strict=True))
    every = [x for arch in rates.values() for x in arch]
    if not every:
        return Cost(len(todo), None, here, 0)
    seconds = sum(statistics.median(rates.get(r.spec.model.arch, every)) * _gflops(r.spec, 1.0, *pool) for r in todo)
    return Cost(len(todo), seconds, here, len(every), any(r.spec.model.arch not in rates for r in todo))
