"""`results export|import`: every finished run as one small JSON file under results/, committed with the code.

A store (SQLite on one machine, a lent GPU's offline folder) does not outlive its machine; a record in git does.
A record is the `run --offline` record.json with a `format` version: resolved spec, tags, params, the metric
history at the evaluation points, summary and final metrics; no checkpoint, no weights. One format serves both
ways home (`import` reads either), and results/ is enough to rebuild every report on a machine without a store
or a GPU. Format: docs/results.md.

Files are keyed by spec_hash (`results/<group>/<run_name>-<spec_hash>.json`), written with sorted keys and only
when their content changes, so exporting the same store twice leaves git with nothing to show.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from harness.errors import UserError
from harness.tracking import inputs as mlflow_inputs
from harness.tracking import store as tracking
from harness.tracking.sinks import log, log_curve
from harness.tracking.status import Status, summary

FORMAT = 1
SUMMARY_KEYS = ("final_iteration", "train_seconds", "mlflow_log_seconds", "stopped_early_at",
                "wall_seconds_this_attempt")  # logged once at the end of a run, not at each evaluation point
REQUIRED = {"group": str, "run_name": str, "status": str, "tags": dict, "params": dict, "spec_yaml": str,
            "history": list, "summary": dict}
DROPPED_TAGS = ("imported_from",)  # where a record came from is this machine's business, not the run's


def record_of(c, run) -> dict:
    """The record of one MLflow run, as `run --offline` writes it, plus `format`."""
    import mlflow

    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") and k not in DROPPED_TAGS}
    by_step: dict[int, dict] = {}
    summary, final = {}, {}
    for key in sorted(run.data.metrics):
        if key in SUMMARY_KEYS:
            summary[key] = run.data.metrics[key]
            continue
        for step, value in tracking.metric_history(c, run.info.run_id, key):
            by_step.setdefault(step, {"step": step})[key] = value
        final[key] = run.data.metrics[key]
    exp = c.get_experiment(run.info.experiment_id)
    return {"format": FORMAT, "group": exp.name, "run_name": run.info.run_name, "status": run.info.status,
            "tags": tags, "params": dict(run.data.params),
            "spec_yaml": mlflow.artifacts.load_text(f"{run.info.artifact_uri}/spec.yaml"),
            "history": [by_step[s] for s in sorted(by_step)], "summary": summary, "final": final}


def record_path(root: Path, record: dict) -> Path:
    return root / record["group"] / f"{record['run_name']}-{record['tags']['spec_hash']}.json"


def dumps(record: dict) -> str:
    return json.dumps(record, sort_keys=True, indent=1) + "\n"


def write_record(root: Path, record: dict) -> bool:
    """Write one record atomically; False (and the file untouched) when it already holds this content."""
    path = record_path(root, record)
    text = dumps(record)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader never sees half a record
    return True


def finished_runs(c) -> list:
    """Every FINISHED top-level run with a spec_hash (Optuna trials are child runs: tuned specs are the record),
    oldest first, so that the newest run of a spec_hash is the one written."""
    runs = []
    for exp in c.search_experiments():
        runs += [r for r in c.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                          max_results=50000)
                 if "spec_hash" in r.data.tags and "mlflow.parentRunId" not in r.data.tags]
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def export_results(out: Path) -> int:
    """Write every FINISHED run of the store (MLFLOW_TRACKING_URI) to `out`; returns the files written."""
    db = tracking.sqlite_file()
    if db is not None and not db.is_file():  # reading must not create an empty store
        print(f"results: no MLflow store at {db}; nothing to export", file=sys.stderr)
        return 0
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run's spec.yaml is noise
    c = tracking.client()
    records = {}
    for run in finished_runs(c):
        rec = record_of(c, run)
        records[record_path(out, rec)] = rec
    written = sum(write_record(out, rec) for rec in records.values())
    print(f"results: {len(records)} finished runs, {written} file(s) written to {out}/, "
          f"{len(records) - written} unchanged", file=sys.stderr)
    return written


def check_record(path: Path) -> None:
    """One `error:` line naming the file, the key and what was expected; nothing is imported from a bad file."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: expected a JSON run record (docs/results.md): {e}") from None
    if not isinstance(rec, dict):
        raise UserError(f"{path}: expected a JSON object (a run record, docs/results.md)")
    if rec.get("format", FORMAT) != FORMAT:
        raise UserError(f"{path}: format: expected {FORMAT}, found {rec['format']!r} (a newer harness wrote it?)")
    for key, kind in REQUIRED.items():
        if not isinstance(rec.get(key), kind):
            raise UserError(f"{path}: {key}: expected a {kind.__name__}, found {type(rec.get(key)).__name__}")
    if not rec["tags"].get("spec_hash"):
        raise UserError(f"{path}: tags.spec_hash: expected the run's spec hash (16 hex digits)")


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


def import_record(record_path: Path) -> Status:
    """Log one offline record into the MLflow store as the run `execute` would have made; idempotent."""
    from mlflow.entities import Metric, Param

    try:
        rec = json.loads(record_path.read_text())
        tags, history, group = rec["tags"], rec["history"], rec["group"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{record_path}: expected a record.json written by `run --offline` ({e})") from e
    c = tracking.client()
    exp_id = tracking.experiment_id(c, group)
    existing = tracking.find_run(c, exp_id, tags["spec_hash"])
    if existing is not None and existing.info.status == "FINISHED":
        log(f"{rec['run_name']}: already FINISHED in MLflow (run {existing.info.run_id}); not imported again")
        return Status.SKIPPED
    r = c.create_run(exp_id, run_name=rec["run_name"], tags={**tags, "imported_from": str(record_path)})
    run_id = r.info.run_id
    ts = int(time.time() * 1000)
    metrics = [Metric(k, float(v), ts, h["step"]) for h in history for k, v in h.items() if k != "step"]
    last_step = history[-1]["step"] if history else 0
    metrics += [Metric(k, float(v), ts, last_step) for k, v in rec["summary"].items()]
    params = [Param(k, v) for k, v in rec["params"].items()]
    for i in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
        c.log_batch(run_id, metrics=metrics[i:i + 1000], params=params if i == 0 else [])
    c.log_text(run_id, rec["spec_yaml"], "spec.yaml")
    mlflow_inputs.log_run_inputs(c, run_id, rec.get("dataset"))
    if (record_path.parent / mlflow_inputs.MODEL_NAME / "MLmodel").exists():
        mlflow_inputs.import_final_model(c, run_id, record_path.parent / mlflow_inputs.MODEL_NAME)
    if rec["status"] == "FINISHED":
        log_curve(c, run_id, f"{rec['run_name']} ({tags['data']}, budget {tags['budget']})")
    else:
        for k in ("failure", "failure_message"):
            c.set_tag(run_id, k, rec["final"].get(k, ""))
    c.set_terminated(run_id, rec["status"])
    log(f"{rec['run_name']}: imported as MLflow run {run_id} ({rec['status']}) in experiment '{group}' "
        f"from {record_path}")
    return Status.IMPORTED
