"""Declarative experiment specs: YAML files in, validated and resolved runs out.

A spec is the single source of truth for a run; its sections are the models of harness.core.schema (re-exported here,
so that callers import one module). This module reads spec files (one line naming file, key and what was
expected for anything it cannot use), applies --set overrides, and resolves a spec into its runs: one per seed,
every iteration count scaled by --budget, refused where the budget is too small for the schedule to mean what
the spec says.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import typing
from pathlib import Path
from typing import NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.core.families import FAMILIES
from harness.core.groups import FIGURE_FILES
from harness.core.names import inside, name_problem
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


# The fields the first records hashed (format 1), as section.field. A field added since is left out of a run's hash
# while it holds the value a spec that leaves it out resolves to: one rule for every later field (model.init,
# model.bn_batch, schedule.threshold, and any to come), so a field with a default never moves an older record's hash.
HASHED_FROM_THE_START = frozenset({
    "batch_size", "channels_last", "compile", "dtype", "eval_points", "tune",
    "data.augment", "data.mean", "data.split_seed", "data.test_time_mean", "data.val_fraction", "data.val_size",
    "model.arch", "model.bn_on_shortcut", "model.depth", "model.fc_relu", "model.shortcut", "model.stem",
    "optimizer.betas", "optimizer.lr", "optimizer.momentum", "optimizer.name", "optimizer.nesterov",
    "optimizer.weight_decay",
    "schedule.early_stopping_patience", "schedule.gamma", "schedule.milestones", "schedule.mode", "schedule.name",
    "schedule.patience", "schedule.total_iters", "schedule.warmup", "schedule.warmup_iters",
})
# data.augment was a bool before flip-only existed: the two old values hash as they did.
_AUGMENT_AS_HASHED = {name: flag for flag, name in AUGMENT_OF_BOOL.items()}


# How a run is computed, not what it is: the same run on a faster path (channels_last memory, torch.compile) keeps
# its hash, so a campaign skips or resumes its runs whichever path trains them; the record's params name the path.
PATH_FIELDS = {"channels_last": False, "compile": False}


def _fields(body: dict) -> list[tuple[str, str | None]]:
    """(section, field) of each field of a dumped spec; (field, None) for a top-level one."""
    return [(k, f) for k, v in body.items() for f in (v if isinstance(v, dict) else [None])]


def _left_out_value(raw: dict, section: str, field: str | None):
    """The value a field takes when a spec leaves it out, the rest of the spec as it is."""
    without = copy.deepcopy(raw)
    (without[section] if field else without).pop(field or section)
    value = Spec.model_validate(without).model_dump(mode="json")[section]
    return value[field] if field else value


def hashed(spec: Spec) -> dict:
    """What a run's hash is of: the resolved spec less what names or describes it, its path fields at the values
    every record had before paths were chosen (PATH_FIELDS), a field added after the first records left out while it
    holds its left-out value (HASHED_FROM_THE_START), and data.augment's old bools as they were hashed."""
    raw = spec.model_dump(mode="json", exclude={"seeds", "description", "heavy", "name", "tuned"})
    body = copy.deepcopy(raw) | PATH_FIELDS
    for section, field in _fields(body):
        if section in HASHED_FROM_THE_START or f"{section}.{field}" in HASHED_FROM_THE_START:
            continue  # (a section hashed whole from the start, as `tune`, is so still)
        here = body[section][field] if field else body[section]
        if here == _left_out_value(raw, section, field):
            (body[section] if field else body).pop(field or section)
    augment = body["data"]["augment"]
    body["data"]["augment"] = _AUGMENT_AS_HASHED.get(augment, augment)
    return body


def _pretty_loc(loc) -> str:
    return ".".join(str(p) for p in loc) or "<top level>"


def _allowed_keys(parent_loc) -> list[str]:
    """The keys a section accepts, found by walking the pydantic models along the error's location."""
    model: type[BaseModel] = Spec
    for part in parent_loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        sub = next((a for a in typing.get_args(field.annotation) or (field.annotation,)
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            break
        model = sub
    return sorted(model.model_fields)


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = _pretty_loc(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"] and err["type"] == "value_error":  # a check across sections names its keys itself
        return msg
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (expected one of: {', '.join(_allowed_keys(err['loc'][:-1]))})"
    got = err.get("input")
    if isinstance(got, (dict, list)) or got is None:
        return f"{loc}: {msg}"
    return f"{loc}: {msg}, got {got!r}"


def _section(raw: dict, keys: list[str], path: str, where: str) -> dict:
    """The section of `raw` that holds the last of `keys` (made where missing): the one walker of dotted keys,
    for --set on a spec's YAML and for the overrides a tuning trial samples, so both reach a field the same way."""
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise SpecError(f"{where}: --set {path}: '{k}' is not a section")
    return node


def apply_override(raw: dict, assignment: str, file: str) -> None:
    """`model.depth=56` -> raw["model"]["depth"] = 56, with the value parsed as YAML."""
    if "=" not in assignment:
        raise SpecError(f"{file}: --set {assignment}: expected KEY.PATH=VALUE")
    path, value = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = _section(raw, keys, path, file)
    try:
        node[keys[-1]] = parse_yaml(value)
    except SpecError as e:
        raise SpecError(f"{file}: --set {path}: {e}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{file}: --set {path}: expected a YAML value (e.g. 56, 0.1, [0, 1], true), got {value!r}: "
                        f"{getattr(e, 'problem', e)}") from None


def with_overrides(spec: Spec, overrides: dict[str, object]) -> Spec:
    """A copy of `spec` with dotted-key overrides (e.g. {"schedule.gamma": 0.2}, what a tuning trial samples),
    validated again as a whole."""
    raw = spec.model_dump(mode="json")
    for path, value in overrides.items():
        keys = path.split(".")
        _section(raw, keys, path, spec.name or "spec")[keys[-1]] = value
    return Spec.model_validate(raw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader, refusing a key given twice in one mapping: left to itself the last one wins, and a spec
    edited in two places trains on whichever came second without a word."""

    def construct_mapping(self, node, deep=False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpecError(f"key {key!r} given twice (line {seen[key]} and line {line}); expected each key once "
                                "in a mapping")
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader: plain data, no objects


def _read_yaml(path: Path):
    """The YAML of a spec file, or one line saying why there is none: not text, not YAML, or no keys at all (an
    empty or all-comment file would otherwise be the default recipe, trained without a word)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not a text file (byte 0x{e.object[e.start]:02x} at offset {e.start} is not UTF-8); "
                        "expected a YAML spec") from None
    try:
        raw = parse_yaml(text)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None or raw == {}:
        raise SpecError(f"{path}: empty spec (no keys, only blanks or comments); expected a mapping of spec keys "
                        "(model, optimizer, schedule, data, ...)")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: <top level>: expected a mapping of spec keys, got {type(raw).__name__}")
    return raw


NOT_INHERITED = ("description", "name", "heavy")  # what a spec says of itself, never taken from its base


def merged(base: dict, over: dict) -> dict:
    """`over` on top of `base`, section by section (a list or value replaces; a mapping merges key by key)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def with_base(path: Path, raw: dict, seen: tuple[Path, ...] = ()) -> dict:
    """A spec that names `base: FILE` (relative to its folder, inside the folder above it: `baseline.yaml`,
    `../table6/resnet32.yaml`) states only its difference, as Hydra's defaults with an override do: the base's keys,
    less its description, name and heaviness, with this spec's on top. The result is validated as any spec, so the
    resolved spec and its hash are those of the whole recipe written out."""
    base = raw.pop("base", None)
    if base is None:
        return raw
    target = path.parent / str(base)
    if not isinstance(base, str) or target.suffix != ".yaml" or not inside(path.parent.parent, target):
        raise SpecError(f"{path}: base: expected a .yaml spec beside this one or in a folder beside its own (e.g. "
                        f"baseline.yaml), got {base!r}")
    if target.resolve() in seen or target.resolve() == path.resolve():
        raise SpecError(f"{path}: base: {base}: bases that lead back to this spec (expected a chain that ends)")
    if not target.is_file():
        raise SpecError(f"{path}: base: {base}: spec file not found")
    parent = with_base(target, copy.deepcopy(_read_yaml(target)), (*seen, path.resolve()))
    return merged({k: v for k, v in parent.items() if k not in NOT_INHERITED}, raw)


def load_spec(path: str | Path, overrides: list[str] = ()) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found (expected a YAML file)")
    raw = with_base(path, copy.deepcopy(_read_yaml(path)))
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
