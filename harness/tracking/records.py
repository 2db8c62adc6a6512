"""`results export`: every finished run as one small JSON file under results/, committed with the code (`results
import` logs them back: harness.tracking.importing).

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
from pathlib import Path

import mlflow

from harness.core.names import inside, name_problem
from harness.errors import UserError
from harness.tracking import inputs as mlflow_inputs
from harness.tracking import store as tracking
from harness.tracking.experiments import find_group_run, group_of
from harness.tracking.run_facts import content_digest

FORMAT = 2  # 2 adds start_time, end_time, dataset and MLflow's description and source tags; 1 is still read
FORMATS = (1, 2)
SUMMARY_KEYS = tuple(tracking.record_key(k) for k in ("final_iteration", "train_seconds", "mlflow_log_seconds",
                                                       "model_log_seconds", "stopped_early_at",
                                                       "wall_seconds_this_attempt"))  # logged once, at the end
KEPT_MLFLOW_TAGS = (mlflow_inputs.NOTE, "mlflow.source.")  # the description and the Source column; not mlflow.user
REQUIRED = {"group": str, "run_name": str, "status": str, "tags": dict, "params": dict, "spec_yaml": str,
            "history": list, "summary": dict}
TIMES_TAG = "run_times"  # on a run imported from a record that kept no start and end: MLflow's are the import's
DROPPED_TAGS = ("imported_from", TIMES_TAG)  # where a record came from is this machine's business, not the run's


def record_of(c, run, group: str) -> dict:
    """The record of one MLflow run of `group`, as `run --offline` writes it, plus `format`."""
    tags = {k: v for k, v in run.data.tags.items()
            if (not k.startswith("mlflow.") or k.startswith(KEPT_MLFLOW_TAGS)) and k not in DROPPED_TAGS}
    by_step: dict[int, dict] = {}
    summary, final = {}, {}
    for key in sorted(run.data.metrics):
        name = tracking.record_name(key)  # None: the monitor's load of the machine, the store's, not the record's
        if name is None:
            continue
        if name in SUMMARY_KEYS:
            summary[name] = run.data.metrics[key]
            continue
        for step, value in tracking.metric_history(c, run.info.run_id, key):
            by_step.setdefault(step, {"step": step})[name] = value
        final[name] = run.data.metrics[key]
    rec = {"format": FORMAT, "group": group, "run_name": run.info.run_name, "status": run.info.status,
            "tags": tags, "params": dict(run.data.params),
            "spec_yaml": _spec_yaml(run),
            "history": [by_step[s] for s in sorted(by_step)], "summary": summary, "final": final,
            "dataset": _dataset_of(run), **_times_of(run)}
    return {**rec, "digest": content_digest(rec)}


def _spec_yaml(run) -> str:
    """The run's spec.yaml artifact. MLflow draws a progress bar for each download, even of this 1 kB file, and
    reads its switch from the environment at each one: the switch is off for this download only, so a batch's
    log (`--no-progress`) does not get a bar per record it publishes."""

    with tracking.environ(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        return mlflow.artifacts.load_text(f"{run.info.artifact_uri}/spec.yaml")


def _times_of(run) -> dict:
    """The run's start and end, or none where they are an import's (a record written before records kept them)."""
    if TIMES_TAG in run.data.tags:
        return {"start_time": None, "end_time": None}
    return {"start_time": run.info.start_time, "end_time": run.info.end_time}


def _dataset_of(run) -> dict | None:
    """The run's training dataset input as the dict mlflow_inputs.split_datasets makes, or None."""
    for d in run.inputs.dataset_inputs if run.inputs else ():
        if {t.value for t in d.tags if t.key == "mlflow.data.context"} - {"training"}:
            continue
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


def finished_runs(c) -> list[tuple[str, object]]:
    """(group, run) of every FINISHED top-level run with a spec_hash (Optuna trials are child runs: tuned specs are
    the record), oldest first, so that the newest run of a spec_hash is the one written."""
    runs = []
    for exp in c.search_experiments():
        runs += [(group_of(exp), r) for r in c.search_runs([exp.experiment_id],
                                                           filter_string="attributes.status = 'FINISHED'",
                                                           max_results=50000)
                 if "spec_hash" in r.data.tags and "mlflow.parentRunId" not in r.data.tags]
    return sorted(runs, key=lambda gr: (gr[1].info.start_time or 0, gr[1].info.run_id))


def export_results(out: Path) -> int:
    """Write every FINISHED run of the store (MLFLOW_TRACKING_URI) to `out`; returns the files written."""
    db = tracking.sqlite_file()
    if db is not None and not db.is_file():  # reading must not create an empty store
        print(f"results: no MLflow store at {db}; nothing to export", file=sys.stderr)
        return 0
    c = tracking.client()
    records = {}
    for group, run in finished_runs(c):
        rec = record_of(c, run, group)
        records[record_path(out, rec)] = rec
    written = sum(write_record(out, rec) for rec in records.values())
    print(f"results: {len(records)} finished runs, {written} file(s) written to {out}/, "
          f"{len(records) - written} unchanged", file=sys.stderr)
    return written


def export_run(out: Path, group: str, spec_hash: str) -> Path | None:
    """One run's record into `out` as soon as it has FINISHED (`--publish`): a long batch whose store goes with its
    machine keeps every run it finished. Returns the record's path, or None where the run did not finish."""
    c = tracking.client()
    run = find_group_run(c, group, spec_hash)
    if run is None or run.info.status != "FINISHED":
        return None
    rec = record_of(c, run, group)
    path = record_path(out, rec)
    if write_record(out, rec):
        print(f"results: wrote {path}", file=sys.stderr, flush=True)
    return path
