"""Declarative experiment specs: YAML in, validated and resolved runs out.

A spec is the single source of truth for a run. Everything that changes a result lives here, so that
its hash (with seed, budget and data) identifies the run in MLflow for skipping and resuming. Pydantic
rejects unknown keys because a typo ("momentun") that silently falls back to a default is exactly the
kind of error that produces a 70 % reproduction.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from harness.errors import SpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSpec(_Strict):
    arch: Literal["resnet", "plain", "torchvision_resnet34"] = "resnet"
    depth: int = 32
    shortcut: Literal["A", "B"] = "A"
    bn_on_shortcut: bool = True
    fc_relu: bool = False

    @field_validator("depth")
    @classmethod
    def _depth_is_6n_plus_2(cls, depth, info: ValidationInfo):
        if info.data.get("arch") in ("resnet", "plain") and (depth < 8 or (depth - 2) % 6):
            raise ValueError("expected 6n+2 with n >= 1 for the CIFAR ResNet (8, 20, 32, 44, 56, 110, ...)")
        return depth


class OptimizerSpec(_Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


class WarmupSpec(_Strict):
    """The paper's ResNet-110 trick: a small lr until training error drops below a threshold."""

    lr: float = Field(0.01, gt=0)
    until_train_error: float = Field(80.0, gt=0, le=100)
    max_iters: int = Field(400, ge=1)


class ScheduleSpec(_Strict):
    name: Literal["multistep", "plateau", "cosine"] = "multistep"
    total_iters: int = Field(64000, ge=1)
    milestones: list[int] = [32000, 48000]
    gamma: float = Field(0.1, gt=0, le=1)
    # ReduceLROnPlateau on validation loss; patience in iterations, checked at evaluation points.
    patience: int = Field(10000, ge=0)
    mode: Literal["min", "max"] = "min"
    early_stopping_patience: int | None = Field(None, ge=1)
    warmup: WarmupSpec | None = None
    # Linear ramp of the lr from ~0 over this many iterations (used by tuning; 0 = off).
    warmup_iters: int = Field(0, ge=0)

    @field_validator("milestones")
    @classmethod
    def _milestones_inside_run(cls, milestones, info: ValidationInfo):
        total = info.data.get("total_iters")
        if sorted(milestones) != milestones:
            raise ValueError("expected increasing iteration numbers")
        for m in milestones:
            if total is not None and not 0 < m < total:
                raise ValueError(f"expected every milestone inside (0, total_iters={total}), {m} is not")
        return milestones

    @model_validator(mode="after")
    def _warmup_inside_run(self):
        if self.warmup_iters >= self.total_iters:
            raise ValueError(f"warmup_iters: expected fewer than total_iters={self.total_iters}")
        return self


class DataSpec(_Strict):
    val_fraction: float | None = Field(None, gt=0, lt=1)
    val_size: int | None = Field(None, ge=1)
    split_seed: int = 0
    mean: Literal["per_pixel", "per_channel", "none"] = "per_pixel"
    augment: bool = True
    # The seed log evaluated raw images while training on mean-subtracted ones.
    test_time_mean: bool = True

    @model_validator(mode="after")
    def _one_split_rule(self):
        if self.val_fraction is not None and self.val_size is not None:
            raise ValueError("val_fraction/val_size: expected one of them, got both")
        if self.val_fraction is None and self.val_size is None:
            self.val_fraction = 0.1
        return self


TuneRange = tuple[float, float]


class TuneSpec(_Strict):
    """Search space for `harness tune`; ranges are validated here like the rest of the spec."""

    lr: TuneRange | None = (0.01, 0.5)
    milestone_fractions: list[TuneRange] | None = [(0.3, 0.7), (0.6, 0.95)]
    gamma: TuneRange | None = (0.05, 0.5)
    warmup_iters: tuple[int, int] | None = None
    families: list[Literal["multistep", "cosine", "plateau"]] = ["multistep"]
    pruner: Literal["median", "hyperband", "none"] = "median"

    @field_validator("lr", "gamma")
    @classmethod
    def _positive_range(cls, v):
        if v is not None and not 0 < v[0] < v[1]:
            raise ValueError(f"expected [low, high] with 0 < low < high, got {list(v)}")
        return v

    @field_validator("milestone_fractions")
    @classmethod
    def _fraction_ranges(cls, v):
        for r in v or []:
            if not 0 < r[0] < r[1] < 1:
                raise ValueError(f"expected ranges [low, high] with 0 < low < high < 1, got {list(r)}")
        return v

    @field_validator("warmup_iters")
    @classmethod
    def _int_range(cls, v):
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError(f"expected [low, high] with 0 <= low < high, got {list(v)}")
        return v


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class Spec(_Strict):
    name: str | None = None
    description: str = ""
    heavy: bool = False
    model: ModelSpec = ModelSpec()
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    data: DataSpec = DataSpec()
    batch_size: int = Field(128, ge=1)
    seeds: list[int] = Field([0], min_length=1)
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    channels_last: bool = False
    # false: eager; true: torch.compile's default mode; "reduce-overhead" adds CUDA-graph capture of the
    # forward and backward (static shapes; on CPU it is the default mode); "max-autotune" also tunes kernels.
    compile: bool | str = False
    eval_points: int = Field(32, ge=1)
    tune: TuneSpec | None = None

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_mode(cls, v):
        if isinstance(v, bool) or v in COMPILE_MODES:
            return v
        raise ValueError(f"expected true, false or one of {', '.join(COMPILE_MODES)}, got {v!r}")


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
        body = {"spec": self.spec.model_dump(mode="json", exclude={"seeds", "description", "heavy", "name"}),
                "seed": self.seed, "budget": self.budget, "data": data_id}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


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


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = _pretty_loc(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
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
        node[keys[-1]] = yaml.safe_load(value)
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


def load_spec(path: str | Path, overrides: list[str] = ()) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found (expected a YAML file)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: <top level>: expected a mapping of spec keys, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for o in overrides:
        apply_override(raw, o, str(path))
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{path}: {_first_error(e)}") from None
    if spec.name is None:
        spec = spec.model_copy(update={"name": path.stem})
    return spec


def scale_iters(n: int, budget: float) -> int:
    return max(1, math.floor(n * budget + 0.5))


def resolve_runs(path: str | Path, spec: Spec, budget: float) -> list[RunSpec]:
    """Expand seeds and apply the budget to every iteration count (total, milestones, patience, warm-up)."""
    if not budget > 0:
        raise SpecError(f"--budget: expected a positive fraction of the paper's iterations, got {budget}")
    s = spec.schedule
    total = scale_iters(s.total_iters, budget)
    milestones = sorted({scale_iters(m, budget) for m in s.milestones if scale_iters(m, budget) < total})
    sched = s.model_copy(update={
        "total_iters": total,
        "milestones": milestones,
        "patience": scale_iters(s.patience, budget) if s.patience else 0,
        "early_stopping_patience": scale_iters(s.early_stopping_patience, budget)
        if s.early_stopping_patience else None,
        "warmup_iters": min(scale_iters(s.warmup_iters, budget), total - 1) if s.warmup_iters else 0,
        "warmup": s.warmup.model_copy(update={"max_iters": scale_iters(s.warmup.max_iters, budget)})
        if s.warmup else None,
    })
    scaled = spec.model_copy(update={"schedule": sched})
    path = Path(path)
    return [RunSpec(spec=scaled, group=path.parent.name or "default", name=spec.name or path.stem, seed=seed,
                    budget=budget, source_file=str(path)) for seed in spec.seeds]


SKIPPED_FOLDERS = {"mlruns", "__pycache__"}  # and hidden ones (.venv, .git): their YAML is no spec


def expand_paths(paths: list[str]) -> list[Path]:
    """Spec arguments may be files or folders (all *.yaml inside, sorted, `paper.yaml` excluded). A folder walk
    skips the tracking store (each run's resolved spec.yaml artifact) and hidden folders, so that
    `validate .` in a checkout reads the specs and nothing else."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.yaml") if q.name != "paper.yaml" and not any(
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


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
