"""The factors in which a reproduction can depart from the paper's recipe, as `diagnose` weighs them: each a part of a
spec, read the same way from a user's spec and from a record's resolved one.

A factor's value is canonical across budgets, so that a run at budget 1/8 stands for a spec written at budget 1:
milestones and warm-up as fractions of the run, the length as images seen (compared as a ratio, `same_change`), and
only the fields the run reads (a plateau ignores milestones, Adam its momentum). The overrides that move a spec to
another's value of one factor keep everything else, its length in images included (`moved_to`), so a generated
one-factor run measures that factor and no other. A leaf of plain spec logic: no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from harness.core.families import FAMILIES
from harness.core.schema import ScheduleSpec, Spec

Value = tuple[tuple[str, object], ...]  # a factor's value: its fields as sorted (key, value) pairs, hashable


@dataclass(frozen=True)
class Factor:
    name: str
    covers: str  # the spec fields it stands for, as a reader knows them


FACTORS: tuple[Factor, ...] = (
    Factor("architecture", "model: arch, depth, stem, shortcuts, init, BN"),
    Factor("optimizer", "optimizer: its name and settings"),
    Factor("schedule", "schedule: family, decay points and factor, plateau rule, warm-up"),
    Factor("batch size", "batch_size (at the same images seen)"),
    Factor("split", "data.val_fraction / val_size: images held out of training"),
    Factor("augmentation", "data.augment"),
    Factor("precision", "dtype"),
    Factor("preprocessing", "data.mean and data.test_time_mean"),
    Factor("length", "schedule.total_iters x batch_size (images seen) and early stopping"),
)
NAMES = tuple(f.name for f in FACTORS)
CONTEXT = ("split", "length")  # what a whole-recipe comparison matches by images seen, not by value
RATIO_TOLERANCE = 0.01  # lengths in images that agree to 1 % are one length (iterations are rounded per budget)


def _frozen(x):
    if isinstance(x, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in x.items()))
    if isinstance(x, list | tuple):
        return tuple(_frozen(v) for v in x)
    return x


def _schedule_value(s: ScheduleSpec) -> dict:
    fam = FAMILIES[s.name]
    d = s.model_dump(mode="json", exclude={"total_iters", "early_stopping_patience", *fam.ignores})
    if fam.milestones:
        d["milestones"] = [round(m / s.total_iters, 3) for m in s.milestones]
    d["warmup_iters"] = round(s.warmup_iters / s.total_iters, 3)
    return d


def values_of(spec: Spec) -> dict[str, Value]:
    """Each factor's value in `spec` (a spec as written, or a run's resolved one at any budget)."""
    opt = spec.optimizer.model_dump(mode="json", exclude={"betas"} if spec.optimizer.name == "sgd" else
                                    {"momentum", "nesterov"})
    d = spec.data
    raw = {
        "architecture": spec.model.model_dump(mode="json"),
        "optimizer": opt,
        "schedule": _schedule_value(spec.schedule),
        "batch size": {"batch_size": spec.batch_size},
        "split": {"val_fraction": d.val_fraction or 0.0, "val_size": d.val_size or 0},
        "augmentation": {"augment": d.augment},
        "precision": {"dtype": spec.dtype},
        "preprocessing": {"mean": d.mean, "test_time_mean": d.test_time_mean},
        "length": {"images": spec.schedule.total_iters * spec.batch_size,
                   "early_stopping_patience": spec.schedule.early_stopping_patience},
    }
    return {name: _frozen(v) for name, v in raw.items()}


def images(values: dict[str, Value]) -> int:
    return dict(values["length"])["images"]


def same_length(a: dict[str, Value], b: dict[str, Value]) -> bool:
    return math.isclose(images(a), images(b), rel_tol=RATIO_TOLERANCE)


def equal(factor: str, a: dict[str, Value], b: dict[str, Value]) -> bool:
    """Two runs agree on `factor`: the same value; for the length, the same images seen and early stopping."""
    if factor == "length":
        return same_length(a, b) and dict(a["length"])["early_stopping_patience"] == \
            dict(b["length"])["early_stopping_patience"]
    return a[factor] == b[factor]


def same_change(factor: str, paper: dict[str, Value], yours: dict[str, Value], before: dict[str, Value],
                after: dict[str, Value]) -> bool:
    """`before` -> `after` makes the change the paper -> yours makes in `factor`: the same two values, or for the
    length the same ratio of images seen (and the same early stopping), whatever the budget of either pair."""
    if factor != "length":
        return before[factor] == paper[factor] and after[factor] == yours[factor]
    stop = [dict(v["length"])["early_stopping_patience"] for v in (paper, yours, before, after)]
    return stop[0] == stop[2] and stop[1] == stop[3] and math.isclose(
        images(after) / images(before), images(yours) / images(paper), rel_tol=RATIO_TOLERANCE)


def departures(paper: dict[str, Value], yours: dict[str, Value]) -> list[str]:
    """The factors in which `yours` departs from `paper`, in FACTORS' order."""
    return [f for f in NAMES if not equal(f, paper, yours)]


def words(value: Value, keys: set[str] | None = None) -> str:
    """`key=value` pairs of a factor's value (only `keys` where given), for a table cell."""
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, tuple) else v}".replace('"', "")
                     for k, v in value if keys is None or k in keys)


def differing_keys(a: Value, b: Value) -> set[str]:
    da, db = dict(a), dict(b)
    return {k for k in da.keys() | db.keys() if da.get(k) != db.get(k)}


def _stretched(s: ScheduleSpec, total: int, **update) -> dict:
    """The schedule `s` over `total` iterations: milestones and warm-up at the same fractions of the run."""
    scale = total / s.total_iters
    unread = {k for k in FAMILIES[s.name].ignores if k != "milestones"}  # milestones: the spec checks them anyway
    d = s.model_dump(mode="json", exclude_none=True, exclude=unread)
    d.update(total_iters=total, milestones=[round(m * scale) for m in s.milestones],
             warmup_iters=round(s.warmup_iters * scale), **update)
    return {k: v for k, v in d.items() if v is not None}


def _flow(section: dict) -> str:
    return json.dumps(section, separators=(", ", ": "))


def moved_to(factor: str, base: Spec, yours: Spec, paper: Spec) -> list[str]:
    """`--set` overrides that give `base` the value `yours` has in `factor` (for the length: yours' ratio to the
    paper's images seen), and keep every other factor, the images seen included, as `base` has it."""
    b = base.schedule
    if factor == "architecture":
        return [f"model={_flow(yours.model.model_dump(mode='json', exclude_none=True))}"]
    if factor == "optimizer":
        return [f"optimizer={_flow(dict(values_of(yours)['optimizer']))}"]
    if factor == "schedule":
        theirs = yours.schedule.model_copy(update={"early_stopping_patience": b.early_stopping_patience})
        return [f"schedule={_flow(_stretched(theirs, b.total_iters))}"]
    if factor == "batch size":
        total = round(b.total_iters * base.batch_size / yours.batch_size)
        return [f"batch_size={yours.batch_size}", f"schedule={_flow(_stretched(b, total))}"]
    if factor == "split":
        d = yours.data
        return [f"data.val_fraction={'null' if d.val_fraction is None else d.val_fraction}",
                f"data.val_size={'null' if d.val_size is None else d.val_size}"]
    if factor == "augmentation":
        return [f"data.augment={yours.data.augment}"]
    if factor == "precision":
        return [f"dtype={yours.dtype}"]
    if factor == "preprocessing":
        return [f"data.mean={yours.data.mean}", f"data.test_time_mean={str(yours.data.test_time_mean).lower()}"]
    ratio = (yours.schedule.total_iters * yours.batch_size) / (paper.schedule.total_iters * paper.batch_size)
    stop = yours.schedule.early_stopping_patience
    return [f"schedule={_flow(_stretched(b, round(b.total_iters * ratio), early_stopping_patience=stop))}"]
