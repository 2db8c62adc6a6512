"""One resolved run, end to end: claim it, find or create its record (harness.sinks), train or resume it, record
the outcome. `execute` records into MLflow, `execute_offline` into a folder (the GPU machine has no MLflow);
`import_record` brings such a folder's record into MLflow as the run `execute` would have made.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from harness import claims, mlflow_inputs, tracking
from harness.data import Arrays, to_device
from harness.errors import UserError
from harness.sinks import ToFolder, ToMlflow, log, log_curve
from harness.spec import RunSpec
from harness.train import param_dtype, train


def execute(run: RunSpec, arrays: Arrays, device: torch.device, force: bool = False,
            progress: bool = True) -> str:
    """Returns 'finished', 'skipped', 'diverged' or 'failed'. The run is claimed first (harness/claims.py): one
    writer per run and checkpoint, whatever else is running it."""
    sink = ToMlflow(run, arrays, device, force, progress)
    with claims.claimed(sink.spec_hash, run.run_name, log):
        return _train_into(sink, run, arrays, device, progress)


def execute_offline(run: RunSpec, arrays: Arrays, device: torch.device, out: Path, force: bool = False,
                    progress: bool = True) -> str:
    """Train without MLflow into `out/<spec_hash>/` (harness.sinks.ToFolder); `import` logs it later."""
    return _train_into(ToFolder(run, arrays, device, out, force, progress), run, arrays, device, progress)


def _train_into(sink: ToMlflow | ToFolder, run: RunSpec, arrays: Arrays, device: torch.device, progress: bool) -> str:
    if settled := sink.settled():
        return settled
    data = to_device(arrays, run.spec.data, device, param_dtype(run.spec))  # only for runs that train
    sink.open(data)
    t0 = time.perf_counter()
    try:
        final, model = train(run, data, device, checkpoint=sink.checkpoint, on_eval=sink.on_eval, progress=progress,
                             on_restart=sink.on_restart)
    except KeyboardInterrupt:
        sink.killed()
        raise
    except Exception as e:  # noqa: BLE001 - recorded on the run; the batch goes on
        return sink.failed(e)
    return sink.finished(final, model, time.perf_counter() - t0)


def import_record(record_path: Path) -> str:
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
        return "skipped"
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
    return "imported"
