"""A run's hash: what of its resolved spec identifies it, by one rule, so that every committed record keeps its hash
as fields are added (a test walks results/ and recomputes each).
"""

from __future__ import annotations

import copy

from harness.core.schema import AUGMENT_OF_BOOL, Spec

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
