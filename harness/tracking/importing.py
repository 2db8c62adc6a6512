"""`results import` and `import`: run records (results/, or `run --offline` folders) logged into the MLflow store as
the runs that wrote them, each checked first (one line naming the file, the key and what was expected) and older
formats read as the current one (harness.tracking.records writes them; format: docs/results.md).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import yaml
from mlflow.entities import Metric, Param

from harness.core.data_tag import DataTag
from harness.core.identity import RunIdentity
from harness.core.names import name_problem
from harness.core.spec import RunSpec, Spec
from harness.errors import UserError
from harness.tracking import inputs as mlflow_inputs
from harness.tracking import store as tracking
from harness.tracking.experiments import find_group_run, run_experiment
from harness.tracking.records import (
    FORMAT,
    FORMATS,
    REQUIRED,
    TIMES_TAG,
    path_fields,
)
from harness.tracking.run_facts import content_digest, log, log_curve, meaningful, run_params
from harness.tracking.status import Status, summary


def check_record(path: Path) -> None:
    """One `error:` line naming the file, the key and what was expected; nothing is imported from a bad file."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: expected a JSON run record (docs/results.md): {e}") from None
    if not isinstance(rec, dict):
        raise UserError(f"{path}: expected a JSON object (a run record, docs/results.md)")
    if rec.get("format", FORMAT) not in FORMATS:
        raise UserError(f"{path}: format: expected {' or '.join(map(str, FORMATS))}, found {rec['format']!r} (a "
                        "newer harness wrote it?)")
    for key, kind in REQUIRED.items():
        if not isinstance(rec.get(key), kind):
            raise UserError(f"{path}: {key}: expected a {kind.__name__}, found {type(rec.get(key)).__name__}")
    if not rec["tags"].get("spec_hash"):
        raise UserError(f"{path}: tags.spec_hash: expected the run's spec hash (16 hex digits)")
    for field, value in path_fields(rec):
        if name_problem(value):
            raise UserError(f"{path}: {field}: it becomes a path when the store is exported; {name_problem(value)}")
    if "digest" in rec and rec["digest"] != content_digest(rec):
        raise UserError(f"{path}: digest: the content no longer matches it (edited by hand?); expected the record "
                        "as its run wrote it: export it again from the run's store, or rerun the run")


def record_files(paths: list[Path]) -> list[Path]:
    """results/**/*.json and `run --offline` folders' record.json files, each checked before any is imported."""
    files = []
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or folder (expected results/ or a `run --offline` folder)")
        files += [p] if p.is_file() else sorted(f for f in p.rglob("*.json") if f.suffix == ".json")
    if not files:
        raise UserError(f"{' '.join(map(str, paths))}: no .json run records found (expected results/<group>/*.json)")
    for f in files:
        check_record(f)
    return files


def import_results(paths: list[Path]) -> int:
    """Log every record into the store; a spec_hash already FINISHED there is skipped, so importing twice is
    importing once."""
    files = record_files(list(paths))
    counts = Counter(import_record(f) for f in files)
    print(f"results: {len(files)} records: {summary(counts)}", file=sys.stderr)
    return 0


def as_current(rec: dict) -> dict:
    """A record as the current format holds it (format 1 converted: as_format_2), with the params and identity tags
    that fields added since give it (normalised)."""
    return normalised(rec if rec.get("format", FORMAT) >= 2 else as_format_2(rec))


def normalised(rec: dict) -> dict:
    """The params and identity tags a record written before they existed lacks, as its run had them: a spec field
    added since (model.init, schedule.threshold, ...) at the value its run trained with (the default the spec hash
    rule leaves out), and official_test_set / tested_on_official / full_training_data from its data tag and budget.
    So the runs table and Compare show two seeds of one spec alike whatever harness recorded them. A record whose
    spec no longer validates is imported as it is."""
    body = yaml.safe_load(rec["spec_yaml"]) or {}
    try:
        spec = Spec.model_validate({k: v for k, v in body.items() if k not in RUN_KEYS})
        run = RunSpec(spec=spec, group=rec["group"], name=rec["tags"].get("spec_name", "run"),
                      seed=body["seed"], budget=body["budget"], source_file=str(body.get("source_file", "")))
    except (ValueError, KeyError, TypeError):
        return rec
    tags, data = rec["tags"], DataTag.read(rec["tags"].get("data", ""))
    ident = RunIdentity(tags["spec_hash"], tags.get("data_id", ""), data, run.budget).tags()
    return {**rec, "params": {**run_params(run), **rec["params"]}, "tags": {**ident, **tags}}


RUN_KEYS = ("seed", "budget", "group", "source_file")  # what resolved_yaml adds to the spec's own fields


def as_format_2(rec: dict) -> dict:
    """A format-1 record as format 2 holds it: bookkeeping metrics under timing/, only the params that mean
    something, the description (the resolved spec's) and source tags MLflow shows. Its times are not known;
    import_record takes them from its train_seconds."""

    def renamed(d: dict) -> dict:
        return {tracking.record_key(k): v for k, v in d.items()}

    tags = dict(rec["tags"])
    if description := (yaml.safe_load(rec["spec_yaml"]) or {}).get("description"):
        tags.setdefault(mlflow_inputs.NOTE, description)
    tags.setdefault("mlflow.source.type", "LOCAL")
    tags.setdefault("mlflow.source.name", "python -m harness")
    if commit := tags.get("git_commit", "").removesuffix("-dirty"):
        tags.setdefault("mlflow.source.git.commit", commit)
    return {**rec, "format": FORMAT, "tags": tags, "params": meaningful(rec["params"]), "dataset": rec.get("dataset"),
            "history": [renamed(h) for h in rec["history"]], "summary": renamed(rec["summary"]),
            "final": renamed(rec.get("final", {}))}


def record_datasets(rec: dict) -> dict[str, dict[str, str]]:
    """A record's splits as MLflow datasets, from its data id, data tag and split seed (any record has them; the
    schema is its dataset's where it kept one), so old and new records log the same inputs."""
    schema = (rec.get("dataset") or {}).get("schema")
    return mlflow_inputs.split_datasets(rec["tags"]["data_id"], DataTag.read(rec["tags"].get("data", "")),
                                        int(rec["params"].get("data.split_seed", 0)), schema)


def _times(rec: dict) -> tuple[int, int]:
    """(start, end) in ms: the record's, else (format 1) ending now after its training time."""
    if rec.get("start_time") and rec.get("end_time"):
        return int(rec["start_time"]), int(rec["end_time"])
    seconds = rec["summary"].get(tracking.record_key("train_seconds")) or 0
    end = int(time.time() * 1000)
    return end - int(seconds * 1000), end


def _metrics(rec: dict, start: int, end: int) -> list:
    """The history and summary as MLflow metrics, each evaluation point timed where it fell between start and
    end (MLflow's charts against wall time then look as they did when the run trained)."""

    history = rec["history"]
    last = history[-1]["step"] if history else 0

    def at(step: int) -> int:
        return start + (end - start) * step // last if last else end

    metrics = [Metric(tracking.store_key(k), float(v), at(h["step"]), h["step"]) for h in history
               for k, v in h.items() if k != "step"]
    return metrics + [Metric(tracking.store_key(k), float(v), end, last) for k, v in rec["summary"].items()]


def import_record(record_path: Path) -> Status:
    """Log one record (results/ or `run --offline`) into the MLflow store as the run `execute` would have made,
    with its start and end time, description, source and dataset; idempotent."""

    try:
        rec = as_current(json.loads(record_path.read_text()))
        tags, group = rec["tags"], rec["group"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{record_path}: expected a record.json written by `run --offline` ({e})") from e
    if "digest" not in rec:
        log(f"{record_path}: no digest (written before records carried one): its content is imported unchecked")
    c = tracking.client()
    exp_id = run_experiment(c, group, DataTag.read(tags.get("data", "")), float(tags.get("budget", 1)))
    existing = find_group_run(c, group, tags["spec_hash"])
    if existing is not None and existing.info.status == "FINISHED":
        log(f"{rec['run_name']}: already FINISHED in MLflow (run {existing.info.run_id}); not imported again")
        return Status.SKIPPED
    start, end = _times(rec)
    unrecorded = {} if rec.get("start_time") and rec.get("end_time") else \
        {TIMES_TAG: "unrecorded: the record keeps none, the run's start and end are those of its import"}
    run_id = c.create_run(exp_id, start_time=start, run_name=rec["run_name"],
                          tags={**tags, "imported_from": str(record_path), **unrecorded}).info.run_id
    metrics = _metrics(rec, start, end)
    params = [Param(k, v) for k, v in rec["params"].items()]
    for i in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
        c.log_batch(run_id, metrics=metrics[i:i + 1000], params=params if i == 0 else [])
    c.log_text(run_id, rec["spec_yaml"], "spec.yaml")
    datasets = record_datasets(rec)
    mlflow_inputs.log_run_inputs(c, run_id, datasets)
    if (record_path.parent / mlflow_inputs.MODEL_NAME / "MLmodel").exists():
        mlflow_inputs.import_final_model(c, run_id, record_path.parent / mlflow_inputs.MODEL_NAME,
                                         mlflow_inputs.model_name(rec["params"]),
                                         mlflow_inputs.ModelFacts(rec["params"], rec["final"], datasets,
                                                                  int(rec["final"].get("iterations", 0))))
    if rec["status"] == "FINISHED":
        log_curve(c, run_id, f"{rec['run_name']} ({tags['data']}, budget {tags['budget']})")
    else:
        for k in ("failure", "failure_message"):
            c.set_tag(run_id, k, rec["final"].get(k, ""))
    c.set_terminated(run_id, rec["status"], end_time=end)
    log(f"{rec['run_name']}: imported as MLflow run {run_id} ({rec['status']}) in experiment '{group}' "
        f"from {record_path}")
    return Status.IMPORTED
