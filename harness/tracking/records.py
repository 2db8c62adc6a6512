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

import yaml

from harness.core.data_tag import DataTag
from harness.core.names import inside, name_problem
from harness.errors import UserError
from harness.tracking import inputs as mlflow_inputs
from harness.tracking import store as tracking
from harness.tracking.run_facts import content_digest, log, log_curve, meaningful
from harness.tracking.status import Status, summary

FORMAT = 2  # 2 adds start_time, end_time, dataset and MLflow's description and source tags; 1 is still read
FORMATS = (1, 2)
SUMMARY_KEYS = tuple(tracking.metric_name(k) for k in ("final_iteration", "train_seconds", "mlflow_log_seconds",
                                                       "model_log_seconds", "stopped_early_at",
                                                       "wall_seconds_this_attempt"))  # logged once, at the end
KEPT_MLFLOW_TAGS = (mlflow_inputs.NOTE, "mlflow.source.")  # the description and the Source column; not mlflow.user
REQUIRED = {"group": str, "run_name": str, "status": str, "tags": dict, "params": dict, "spec_yaml": str,
            "history": list, "summary": dict}
TIMES_TAG = "run_times"  # on a run imported from a record that kept no start and end: MLflow's are the import's
DROPPED_TAGS = ("imported_from", TIMES_TAG)  # where a record came from is this machine's business, not the run's


def record_of(c, run) -> dict:
    """The record of one MLflow run, as `run --offline` writes it, plus `format`."""
    tags = {k: v for k, v in run.data.tags.items()
            if (not k.startswith("mlflow.") or k.startswith(KEPT_MLFLOW_TAGS)) and k not in DROPPED_TAGS}
    by_step: dict[int, dict] = {}
    summary, final = {}, {}
    for key in sorted(run.data.metrics):
        if key.startswith("system/"):  # the machine's load while it trained: the store's, not the record's
            continue
        if key in SUMMARY_KEYS:
            summary[key] = run.data.metrics[key]
            continue
        for step, value in tracking.metric_history(c, run.info.run_id, key):
            by_step.setdefault(step, {"step": step})[key] = value
        final[key] = run.data.metrics[key]
    exp = c.get_experiment(run.info.experiment_id)
    rec = {"format": FORMAT, "group": exp.name, "run_name": run.info.run_name, "status": run.info.status,
            "tags": tags, "params": dict(run.data.params),
            "spec_yaml": _spec_yaml(run),
            "history": [by_step[s] for s in sorted(by_step)], "summary": summary, "final": final,
            "dataset": _dataset_of(run), **_times_of(run)}
    return {**rec, "digest": content_digest(rec)}


def _spec_yaml(run) -> str:
    """The run's spec.yaml artifact. MLflow draws a progress bar for each download, even of this 1 kB file, and
    reads its switch from the environment at each one: the switch is off for this download only, so a batch's
    log (`--no-progress`) does not get a bar per record it publishes."""
    import mlflow

    with tracking.environ(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        return mlflow.artifacts.load_text(f"{run.info.artifact_uri}/spec.yaml")


def _times_of(run) -> dict:
    """The run's start and end, or none where they are an import's (a record written before records kept them)."""
    if TIMES_TAG in run.data.tags:
        return {"start_time": None, "end_time": None}
    return {"start_time": run.info.start_time, "end_time": run.info.end_time}


def _dataset_of(run) -> dict | None:
    """The run's training dataset input as the dict mlflow_inputs.dataset makes, or None."""
    for d in run.inputs.dataset_inputs if run.inputs else ():
        ds = d.dataset
        return {"name": ds.name, "digest": ds.digest, "source_type": ds.source_type, "source": ds.source,
                "schema": ds.schema, "profile": ds.profile}
    return None


def record_path(root: Path, record: dict) -> Path:
    """results/<group>/<run_name>-<spec_hash>.json; a field that would climb out of `root` (a name of the store
    or of a record, never checked by MLflow) is one line instead of a file written elsewhere."""
    for field, value in path_fields(record):
        if name_problem(value):
            raise UserError(f"{root}: run {record.get('run_name')!r}: {field}: it names the record's file; "
                            f"{name_problem(value)}")
    path = root / record["group"] / f"{record['run_name']}-{record['tags']['spec_hash']}.json"
    if not inside(root, path):
        raise UserError(f"{path}: outside {root}/ (a link in the way?); expected a record file under it")
    return path


def committed(root: Path, group: str, run_name: str, spec_hash: str) -> bool:
    """Whether `root` holds the finished (or diverged: it diverges again) record of this run: a campaign on a fresh
    machine, or one whose store went with its machine, counts it as done instead of training it again."""
    path = root / group / f"{run_name}-{spec_hash}.json"
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False  # unreadable: `results import` names it; here the run is simply not done
    return isinstance(record, dict) and (record.get("status") == "FINISHED"
                                         or (record.get("tags") or {}).get("failure") == "diverged")


def path_fields(record: dict) -> list[tuple[str, object]]:
    """The fields of a record that its file name is made of."""
    tags = record.get("tags") if isinstance(record.get("tags"), dict) else {}
    return [("group", record.get("group")), ("run_name", record.get("run_name")), ("tags.spec_hash",
                                                                                    tags.get("spec_hash"))]


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
    c = tracking.client()
    records = {}
    for run in finished_runs(c):
        rec = record_of(c, run)
        records[record_path(out, rec)] = rec
    written = sum(write_record(out, rec) for rec in records.values())
    print(f"results: {len(records)} finished runs, {written} file(s) written to {out}/, "
          f"{len(records) - written} unchanged", file=sys.stderr)
    return written


def export_run(out: Path, group: str, spec_hash: str) -> Path | None:
    """One run's record into `out` as soon as it has FINISHED (`--publish`): a long batch whose store goes with its
    machine keeps every run it finished. Returns the record's path, or None where the run did not finish."""
    c = tracking.client()
    run = tracking.find_run(c, tracking.experiment_id(c, group), spec_hash)
    if run is None or run.info.status != "FINISHED":
        return None
    rec = record_of(c, run)
    path = record_path(out, rec)
    if write_record(out, rec):
        print(f"results: wrote {path}", file=sys.stderr, flush=True)
    return path


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
    """A format-1 record as format 2 holds it: bookkeeping metrics under timing/, only the params that mean
    something, the description (the resolved spec's) and source tags MLflow shows, and the dataset from the data
    id. Its times are not known; import_record takes them from its train_seconds."""
    if rec.get("format", FORMAT) >= 2:
        return rec

    def renamed(d: dict) -> dict:
        return {tracking.metric_name(k): v for k, v in d.items()}

    tags = dict(rec["tags"])
    if description := (yaml.safe_load(rec["spec_yaml"]) or {}).get("description"):
        tags.setdefault(mlflow_inputs.NOTE, description)
    tags.setdefault("mlflow.source.type", "LOCAL")
    tags.setdefault("mlflow.source.name", "python -m harness")
    if commit := tags.get("git_commit", "").removesuffix("-dirty"):
        tags.setdefault("mlflow.source.git.commit", commit)
    sizes = DataTag.read(tags.get("data", "")).sizes
    dataset = rec.get("dataset") or mlflow_inputs.dataset_of_id(tags["data_id"], sizes)
    return {**rec, "format": FORMAT, "tags": tags, "params": meaningful(rec["params"]), "dataset": dataset,
            "history": [renamed(h) for h in rec["history"]], "summary": renamed(rec["summary"]),
            "final": renamed(rec.get("final", {}))}


def _times(rec: dict) -> tuple[int, int]:
    """(start, end) in ms: the record's, else (format 1) ending now after its training time."""
    if rec.get("start_time") and rec.get("end_time"):
        return int(rec["start_time"]), int(rec["end_time"])
    seconds = rec["summary"].get(tracking.metric_name("train_seconds")) or 0
    end = int(time.time() * 1000)
    return end - int(seconds * 1000), end


def _metrics(rec: dict, start: int, end: int) -> list:
    """The history and summary as MLflow metrics, each evaluation point timed where it fell between start and
    end (MLflow's charts against wall time then look as they did when the run trained)."""
    from mlflow.entities import Metric

    history = rec["history"]
    last = history[-1]["step"] if history else 0

    def at(step: int) -> int:
        return start + (end - start) * step // last if last else end

    metrics = [Metric(k, float(v), at(h["step"]), h["step"]) for h in history for k, v in h.items() if k != "step"]
    return metrics + [Metric(k, float(v), end, last) for k, v in rec["summary"].items()]


def import_record(record_path: Path) -> Status:
    """Log one record (results/ or `run --offline`) into the MLflow store as the run `execute` would have made,
    with its start and end time, description, source and dataset; idempotent."""
    from mlflow.entities import Param

    try:
        rec = as_current(json.loads(record_path.read_text()))
        tags, group = rec["tags"], rec["group"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{record_path}: expected a record.json written by `run --offline` ({e})") from e
    if "digest" not in rec:
        log(f"{record_path}: no digest (written before records carried one): its content is imported unchecked")
    c = tracking.client()
    exp_id = tracking.experiment_id(c, group)
    existing = tracking.find_run(c, exp_id, tags["spec_hash"])
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
    mlflow_inputs.log_run_inputs(c, run_id, rec.get("dataset"))
    if (record_path.parent / mlflow_inputs.MODEL_NAME / "MLmodel").exists():
        mlflow_inputs.import_final_model(c, run_id, record_path.parent / mlflow_inputs.MODEL_NAME,
                                         mlflow_inputs.model_name(rec["params"]))
    if rec["status"] == "FINISHED":
        log_curve(c, run_id, f"{rec['run_name']} ({tags['data']}, budget {tags['budget']})")
    else:
        for k in ("failure", "failure_message"):
            c.set_tag(run_id, k, rec["final"].get(k, ""))
    c.set_terminated(run_id, rec["status"], end_time=end)
    log(f"{rec['run_name']}: imported as MLflow run {run_id} ({rec['status']}) in experiment '{group}' "
        f"from {record_path}")
    return Status.IMPORTED
