"""Declarative experiment specs: YAML files in, validated and resolved runs out.

A spec is the single source of truth for a run; its sections are the models of harness.core.schema (re-exported here,
so that callers import one module). This module validates what harness.core.spec_file reads (one line naming file,
key and what was expected for anything it cannot use) and resolves a spec into its runs: one per seed, every
iteration count scaled by --budget, refused where the budget is too small for the schedule to mean what the spec
says. A run's hash is harness.core.spec_hash's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.core.families import FAMILIES
from harness.core.groups import FIGURE_FILES
from harness.core.names import name_problem
from harness.core.schema import (  # noqa: F401 - the spec's sections, imported from here by the rest of the harness
    AUGMENT_OF_BOOL,
    COMPILE_MODES,
    DataSpec,
    ModelSpec,
    OptimizerSpec,
    ScheduleSpec,
    Spec,
    TunedFrom,
    TuneRange,
    TuneSpec,
    WarmupSpec,
    default_init,
)
from harness.core.spec_file import apply_override, first_error, read_yaml, section_of, with_base
from harness.core.spec_hash import hashed
from harness.errors import SpecError


class RunSpec(BaseModel):
    """One concrete run: a spec with its seed, budget and data fixed, iterations already scaled."""

    model_config = ConfigDict(frozen=True)
    spec: Spec
    group: str
    name: str
    seed: int
    budget: float
    source_file: str

    @property
    def run_name(self) -> str:
        suffix = "" if self.budget == 1.0 else f"-b{self.budget:g}"
        return f"{self.name}-s{self.seed}{suffix}"

    def spec_hash(self, data_id: str) -> str:
        body = {"spec": hashed(self.spec), "seed": self.seed, "budget": self.budget, "data": data_id}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def with_overrides(spec: Spec, overrides: dict[str, object]) -> Spec:
    """A copy of `spec` with dotted-key overrides (e.g. {"schedule.gamma": 0.2}, what a tuning trial samples),
    validated again as a whole."""
    raw = spec.model_dump(mode="json")
    for path, value in overrides.items():
        keys = path.split(".")
        section_of(raw, keys, path, spec.name or "spec")[keys[-1]] = value
    return Spec.model_validate(raw)


def load_spec(path: str | Path, overrides: list[str] = ()) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found (expected a YAML file)")
    raw = with_base(path, copy.deepcopy(read_yaml(path)))
    for o in overrides:
        apply_override(raw, o, str(path))
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{path}: {first_error(e)}") from None
    if spec.name is None:
        spec = spec.model_copy(update={"name": path.stem})
    return spec


def require_validation(spec: Spec, path: str | Path, what: str) -> None:
    """For a command that reads the validation split whatever the spec says (`tune`): one line if there is none."""
    if not spec.data.has_validation:
        raise SpecError(f"{path}: data.val_fraction: {what} reads the validation split, and this spec has none "
                        "(0: every training image trains); expected a validation split (e.g. 0.1, the paper's 45k/5k)")


# The largest --budget: 100x the paper's schedule is far past any reproduction of it; a larger one is a typo or an
# overflow (1e308 iterations do not fit an integer's float), never a plan.
MAX_BUDGET = 100.0


def scale_iters(n: int, budget: float) -> int:
    return max(1, math.floor(n * budget + 0.5))


def _check_scaled(path: Path, spec: Spec, budget: float, total: int, milestones: list[int]) -> None:
    """A budget whose schedule is no longer the spec's is refused before anything runs: milestones that merge or
    leave the run, or fewer iterations than evaluation points. The budget suggested is a sufficient one: every gap
    between milestones (and the run's ends) at least one iteration, and an iteration per evaluation point."""
    s = spec.schedule
    problems = []
    if len(milestones) != len(s.milestones):
        scaled = [math.floor(m * budget + 0.5) for m in s.milestones]
        problems.append(f"milestones {s.milestones} of {s.total_iters} iterations become {scaled} of {total} "
                        "(expected distinct milestones inside the run)")
    if total < spec.eval_points:
        if budget == 1.0:
            raise SpecError(f"{path}: eval_points: expected at most schedule.total_iters={total}, "
                            f"got {spec.eval_points}")
        problems.append(f"{s.total_iters} iterations become {total}, fewer than eval_points={spec.eval_points} "
                        "(expected an iteration per evaluation point at least)")
    if problems:
        gaps = [b - a for a, b in zip([0, *s.milestones], [*s.milestones, s.total_iters], strict=True)]
        need = max(spec.eval_points / s.total_iters, 1 / min(gaps))
        raise SpecError(f"{path}: --budget {budget:g} is too small for this schedule: {'; '.join(problems)}; "
                        f"expected --budget {need:.2g} or more")


def resolve_runs(path: str | Path, spec: Spec, budget: float, check_budget: bool = True) -> list[RunSpec]:
    """Expand seeds and apply the budget to the iteration counts that lay out the run (total, milestones, the linear
    ramp). The counts of rules that wait on what training shows stay as the spec says: the plateau's and early
    stopping's patience (how long a stalled validation loss is borne, as the seed log's scheduler bore it: 200
    epochs at lr 0.1 before its first drop) and the ResNet-110 warm-up's cap; a short run so sees the lr of a long
    run's first epochs, not a compressed copy of its decays. `check_budget=False` merges milestones that a small
    budget makes coincide instead of refusing the budget."""
    if not (budget > 0 and math.isfinite(budget)):
        raise SpecError(f"--budget: expected a positive fraction of the paper's iterations (a finite number), "
                        f"got {budget}")
    if budget > MAX_BUDGET:
        raise SpecError(f"--budget: expected at most {MAX_BUDGET:g} (already {MAX_BUDGET:g}x the paper's "
                        f"iterations: 6.4 million for a 64k-iteration spec), got {budget:g}")
    path = Path(path)
    s = spec.schedule
    total = scale_iters(s.total_iters, budget)
    milestones = sorted({scale_iters(m, budget) for m in s.milestones if scale_iters(m, budget) < total})
    if check_budget:
        _check_scaled(path, spec, budget, total, milestones)
    reads_patience = FAMILIES[s.name].on_validation
    sched = s.model_copy(update={
        # a family that never reads it keeps the scaled patience it always had: the records keep their hash
        "patience": s.patience if reads_patience or not s.patience else scale_iters(s.patience, budget),
        "total_iters": total,
        "milestones": milestones,
        "warmup_iters": min(scale_iters(s.warmup_iters, budget), total - 1) if s.warmup_iters else 0,
    })
    scaled = spec.model_copy(update={"schedule": sched})
    group, name = path.parent.name or "default", spec.name or path.stem
    for what, value in (("group (the spec's folder)", group), ("name (the file's stem)", name)):
        if name_problem(value):
            raise SpecError(f"{path}: {what}: it names the run's record file; {name_problem(value)}")
    return [RunSpec(spec=scaled, group=group, name=name, seed=seed, budget=budget, source_file=str(path))
            for seed in spec.seeds]


SKIPPED_FOLDERS = {"mlruns", "__pycache__", "campaigns"}  # and hidden ones (.venv, .git): their YAML is no spec;
# experiments/campaigns/ holds campaign files (harness.core.campaign_file), lists of specs


def expand_paths(paths: list[str]) -> list[Path]:
    """Spec arguments may be files or folders (all *.yaml inside, sorted, `paper.yaml` excluded). A folder walk
    skips the tracking store (each run's resolved spec.yaml artifact) and hidden folders, so that
    `validate .` in a checkout reads the specs and nothing else."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.yaml") if q.name not in FIGURE_FILES and not any(
                part in SKIPPED_FOLDERS or part.startswith(".") for part in q.relative_to(p).parts[:-1]))
        else:
            out.append(p)
    return out


def load_specs(paths: list[str], overrides: list[str] = ()) -> tuple[list[tuple[Path, Spec]], list[str]]:
    """Each spec under `paths` with its file, and one error line per bad one: a folder is fixed in one pass."""
    specs, errors = [], []
    for path in expand_paths(paths):
        try:
            specs.append((path, load_spec(path, overrides)))
        except SpecError as e:
            errors.append(str(e))
    return specs, list(dict.fromkeys(errors))


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
        raise SpecError(*errors, *e.lines) from None
    return Collected(runs, errors, len(specs) + len(errors))


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
