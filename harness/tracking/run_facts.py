"""What a run's records say about it, the same in an MLflow run, an `--offline` folder and a committed record: its
tags, params and resolved spec, its progress and closing lines, and the digest that ties a record's content
together. The sinks (harness.tracking.sinks, .folder, .trial) and the records (harness.tracking.records) write them
from here, so that the three never drift apart.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from harness.core.data import Arrays, DeviceData
from harness.core.devices import device_name
from harness.core.families import FAMILIES
from harness.core.identity import RunIdentity
from harness.core.spec import RunSpec, flatten
from harness.tracking import inputs as mlflow_inputs
from harness.tracking import store as tracking
from harness.tracking.figures import learning_curve


def content_digest(record: dict) -> str:
    """sha256 of a run record's canonical JSON (sorted keys, no spaces), every field but `digest` itself, so that
    the numbers, the spec, the tags' git_commit and data_id and the rest are all tied to it: a record changed by
    hand no longer matches. It is no signature: whoever edits a record on purpose can recompute it."""
    body = {k: v for k, v in record.items() if k != "digest"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def log_eval_point(run: RunSpec, step: int, metrics: dict[str, float]) -> None:
    """One line per evaluation point where there is no progress bar (--no-progress, --jobs, a group, a GPU log)."""
    log(f"{run.run_name} it {step}/{run.spec.schedule.total_iters}: train_loss {metrics['train_loss']:.3f}"
        f"{_errors(metrics)} {metrics['images_per_s']:.0f} img/s")


def _errors(metrics: dict) -> str:
    """' test_error X% val_error Y%', each where it was measured (no validation split under data.val_fraction 0, no
    test split while tuning)."""
    return "".join(f" {k} {metrics[k]:.2f}%" for k in ("test_error", "val_error") if k in metrics)


def resolved_yaml(run: RunSpec) -> str:
    body = run.spec.model_dump(mode="json", exclude={"seeds"})
    body.update(seed=run.seed, budget=run.budget, group=run.group, source_file=run.source_file)
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True)  # `§4.2`, not `\xA74.2`


UNUSED = {"optimizer.name": {"sgd": ("betas",), "adam": ("momentum", "nesterov")},
          "schedule.name": {f.name: f.ignores for f in FAMILIES.values()}}  # fields the choice ignores


def meaningful(flat: dict[str, str]) -> dict[str, str]:
    """The params that mean something for this run, so the runs table compares what differs: no field the
    optimizer or schedule ignores (`betas` under SGD), no unset (None) field, none of the spec's labels (its
    name is the spec_name tag, `heavy` a batch option)."""
    dropped = {f"{key.split('.')[0]}.{f}" for key, by in UNUSED.items() for f in by.get(flat.get(key), ())}
    return {k: v for k, v in flat.items() if k not in dropped and k not in ("name", "heavy") and v != "None"}


def param_text(value) -> str:
    """A param as the runs table shows it: a float to 12 significant digits (a sampled or scaled lr reads
    `0.001`, not `0.0010000000000000002`), anything else as str."""
    if isinstance(value, float):
        return f"{value:.12g}"
    if isinstance(value, list):
        return "[" + ", ".join(param_text(v) for v in value) + "]"
    return str(value)


def run_params(run: RunSpec) -> dict[str, str]:
    flat = flatten(run.spec.model_dump(mode="json", exclude={"seeds", "description", "tune", "tuned"}))
    flat.update(seed=run.seed, budget=run.budget)
    return meaningful({k: param_text(v) for k, v in flat.items()})


RUN_LINE = "\n\nThis run: "  # where a run's own line starts in its description, after the spec's


def run_note(run: RunSpec) -> str:
    """The run's description: its spec's, then what this run trained (its seed and its own iteration counts at its
    budget), so that a spec's words about the paper's 64k iterations never stand alone on a 4,000-iteration run."""
    spec, s = run.spec, run.spec.schedule
    family = FAMILIES[s.name]
    parts = [f"seed {run.seed}", f"{s.total_iters:,} iterations of batch {spec.batch_size}",
             f"{spec.optimizer.name} lr {spec.optimizer.lr:g}, schedule {s.name}"]
    if family.milestones and s.milestones:
        parts.append(f"lr x{s.gamma:g} at iterations {', '.join(f'{m:,}' for m in s.milestones)}")
    elif family.gamma:
        parts.append(f"lr x{s.gamma:g} on a plateau")
    if s.warmup is not None:
        parts.append(f"warm-up at lr {s.warmup.lr:g}")
    if run.budget != 1.0:
        parts.append(f"budget {run.budget:g}: the spec's iteration counts (above) scaled by it")
    return f"{spec.description}{RUN_LINE}{'; '.join(parts)}."


def named_metrics(metrics: dict) -> dict:
    """Metrics under the names a record keeps them by (bookkeeping under timing/: tracking.record_key)."""
    return {tracking.record_key(k): v for k, v in metrics.items()}


def log_curve(c, run_id: str, title: str) -> None:
    history = {k: tracking.metric_history(c, run_id, k) for k in ("train_error", "val_error", "test_error")}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "learning_curve.png"
        learning_curve(history, title, path)
        c.log_artifact(run_id, str(path))


PATH_PARAMS = ("compile", "channels_last")  # how a run is computed, not what it is (harness.core.spec_hash)


def resumed_elsewhere(tags: dict[str, str], params: dict[str, str], run: RunSpec, device: torch.device) -> str:
    """'' where a killed run resumes on the device and path it started on; else what it goes on with, as a line for
    its `resumed_on` tag: a run started as two one-thread runs on one CPU may finish as one compiled run on another
    (run --fastest), and its device tag and params, written when it started, say only where it began."""
    now = {"device": device_name(device), **{k: param_text(getattr(run.spec, k)) for k in PATH_PARAMS}}
    was = {"device": tags.get("device", ""), **{k: params.get(k, "False") for k in PATH_PARAMS}}
    if now == was:
        return ""
    return f"{now['device']}, " + ", ".join(f"{k} {now[k]}" for k in PATH_PARAMS)


def run_tags(run: RunSpec, ident: RunIdentity, device: torch.device) -> dict[str, str]:
    """The run's identity (harness.core.identity) and what else finds and describes it."""
    return {"spec_name": run.name, **ident.tags(), "device": device_name(device), "git_commit": tracking.git_commit(),
            "spec_file": run.source_file, "torch": torch.__version__, mlflow_inputs.NOTE: run_note(run),
            **tuned_tags(run.spec), **tracking.source_tags()}


def tuned_tags(spec) -> dict[str, str]:
    """A tuned spec's provenance as tags (tuned.study, tuned.budget, ...): where its schedule came from."""
    t = spec.tuned
    return {} if t is None else {f"tuned.{k}": f"{v:g}" if isinstance(v, float) else str(v)
                                 for k, v in t.model_dump(exclude_none=True).items()}


def run_datasets(arrays: Arrays, ident: RunIdentity, spec) -> dict[str, dict[str, str]]:
    """The run's splits as MLflow datasets (harness.tracking.inputs.split_datasets), with the arrays' schema."""
    return mlflow_inputs.split_datasets(arrays.data_id, ident.data, spec.data.split_seed,
                                        mlflow_inputs.schema_of(arrays.x_train, arrays.y_train))


def ending_line(run: RunSpec, status: str, wall: float, final: dict, data: DeviceData, where: str = "") -> str:
    return (f"{run.run_name}: {status} in {wall:.0f}s{where}:{_errors(final) or ' no error measured'} "
            f"({data.description}, budget {run.budget:g})")
