"""One resolved run, end to end: find or create its MLflow run, train (or resume), record the outcome.

A batch of runs must survive one bad run, so every failure is recorded on that run (status FAILED and a
`failure` tag) and reported back as a status instead of an exception.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from harness import claims, mlflow_inputs, tracking
from harness.data import Arrays, DeviceData, to_device
from harness.devices import device_name
from harness.errors import UserError
from harness.plots import learning_curve
from harness.spec import RunSpec, flatten
from harness.train import Diverged, param_dtype, train


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def log_eval_point(run: RunSpec, step: int, metrics: dict[str, float]) -> None:
    """One line per evaluation point where there is no progress bar (--no-progress, --jobs, a GPU log)."""
    log(f"{run.run_name} it {step}: train_loss {metrics['train_loss']:.3f}{_val(metrics)} "
        f"{metrics['images_per_s']:.0f} img/s")


def _val(metrics: dict) -> str:
    """' val_error X%', or nothing for a run without a validation split (data.val_fraction 0)."""
    return f" val_error {metrics['val_error']:.2f}%" if "val_error" in metrics else ""


def resolved_yaml(run: RunSpec) -> str:
    body = run.spec.model_dump(mode="json", exclude={"seeds"})
    body.update(seed=run.seed, budget=run.budget, group=run.group, source_file=run.source_file)
    return yaml.safe_dump(body, sort_keys=False)


def run_params(run: RunSpec) -> dict[str, str]:
    flat = flatten(run.spec.model_dump(mode="json", exclude={"seeds", "description", "tune"}))
    flat.update(seed=run.seed, budget=run.budget)
    return {k: str(v) for k, v in flat.items()}


def log_curve(c, run_id: str, title: str) -> None:
    history = {k: tracking.metric_history(c, run_id, k) for k in ("train_error", "val_error", "test_error")}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "learning_curve.png"
        learning_curve(history, title, path)
        c.log_artifact(run_id, str(path))


def run_tags(run: RunSpec, arrays: Arrays, data_description: str, device: torch.device) -> dict[str, str]:
    return {"spec_name": run.name, "spec_hash": run.spec_hash(arrays.data_id), "budget": f"{run.budget:g}",
            "data": data_description, "data_id": arrays.data_id, "device": device_name(device),
            "git_commit": tracking.git_commit(), "spec_file": run.source_file, "torch": torch.__version__,
            "official_test_set": str(arrays.is_official_full and run.budget == 1.0).lower(),
            mlflow_inputs.NOTE: run.spec.description, **tracking.source_tags()}


def run_dataset(arrays: Arrays, data: DeviceData) -> dict[str, str]:
    return mlflow_inputs.dataset(arrays.x_train, arrays.y_train, arrays.data_id, data.sizes)


def execute(run: RunSpec, arrays: Arrays, device: torch.device, force: bool = False,
            progress: bool = True) -> str:
    """Returns 'finished', 'skipped', 'diverged' or 'failed'. The run is claimed first (harness/claims.py): one
    writer per run and checkpoint, whatever else is running it."""
    c = tracking.client()
    exp_id = tracking.experiment_id(c, run.group)
    spec_hash = run.spec_hash(arrays.data_id)
    with claims.claimed(spec_hash, run.run_name, log):
        return _execute(c, exp_id, spec_hash, run, arrays, device, force, progress)


def _execute(c, exp_id: str, spec_hash: str, run: RunSpec, arrays: Arrays, device: torch.device, force: bool,
             progress: bool) -> str:
    ckpt = claims.checkpoint_dir() / f"{spec_hash}.pt"
    existing = None if force else tracking.find_run(c, exp_id, spec_hash)
    if existing is not None and (settled := _settled(run, existing)):
        return settled
    data = to_device(arrays, run.spec.data, device, param_dtype(run.spec))  # only for runs that train
    if existing is not None:
        run_id = _resume(c, run, existing, ckpt)
    else:
        run_id = _create(c, exp_id, run, arrays, data, device, ckpt)
    return _train_and_record(c, run, run_id, data, device, ckpt, progress)


def _settled(run: RunSpec, existing) -> str | None:
    """'skipped' for a FINISHED run and 'diverged' for one that diverged before: neither trains again without
    --force (a diverged recipe diverges again); None for a run to resume."""
    if existing.info.status == "FINISHED":
        log(f"{run.run_name}: already FINISHED in MLflow (run {existing.info.run_id}); skipped "
            f"(--force to run again)")
        return "skipped"
    if existing.data.tags.get("failure") == "diverged":
        log(f"{run.run_name}: diverged before (run {existing.info.run_id}); skipped (--force to retry)")
        return "diverged"
    return None


def _resume(c, run: RunSpec, existing, ckpt: Path) -> str:
    run_id = existing.info.run_id
    c.update_run(run_id, status="RUNNING")
    where = f"iteration checkpoint {ckpt.name}" if ckpt.exists() else "the start (no checkpoint yet)"
    log(f"{run.run_name}: resuming MLflow run {run_id} ({existing.info.status}) from {where}")
    return run_id


def _create(c, exp_id: str, run: RunSpec, arrays: Arrays, data: DeviceData, device: torch.device, ckpt: Path) -> str:
    """A new MLflow run with the tags, params and resolved spec that find it again; a checkpoint left by an
    earlier run of the same spec (--force) is not resumed from."""
    from mlflow.entities import Param

    ckpt.unlink(missing_ok=True)
    r = c.create_run(exp_id, run_name=run.run_name, tags=run_tags(run, arrays, data.description, device))
    run_id = r.info.run_id
    c.log_batch(run_id, params=[Param(k, v) for k, v in run_params(run).items()])
    c.log_text(run_id, resolved_yaml(run), "spec.yaml")
    mlflow_inputs.log_run_inputs(c, run_id, run_dataset(arrays, data))
    log(f"{run.run_name}: MLflow run {run_id} in experiment '{run.group}' on {device_name(device)}, "
        f"{data.description}, budget {run.budget:g} ({run.spec.schedule.total_iters} iterations)")
    return run_id


def _train_and_record(c, run: RunSpec, run_id: str, data: DeviceData, device: torch.device, ckpt: Path,
                      progress: bool) -> str:
    log_seconds = [0.0]

    def on_eval(step: int, metrics: dict[str, float]) -> bool:
        log_seconds[0] += tracking.log_metrics(c, run_id, metrics, step)
        if not progress:
            log_eval_point(run, step, metrics)
        return False

    t0 = time.perf_counter()
    try:
        final, model = train(run, data, device, checkpoint=ckpt, on_eval=on_eval, progress=progress,
                             on_restart=lambda line: c.set_tag(run_id, "checkpoint_restart", line))
    except KeyboardInterrupt:
        c.set_terminated(run_id, "KILLED")
        raise
    except Exception as e:  # noqa: BLE001 - recorded on the run; the batch goes on
        return _record_failure(c, run, run_id, e)
    wall = time.perf_counter() - t0
    summary = {"final_iteration": final["iterations"], "train_seconds": final["train_seconds"],
               "mlflow_log_seconds": log_seconds[0]}
    if "stopped_early_at" in final:
        summary["stopped_early_at"] = final["stopped_early_at"]
    if "warmup_ended_by" in final:  # "cap": the safety cap, not the training error, ended the ResNet-110 warm-up
        c.set_tag(run_id, "warmup_ended_by", f"{final['warmup_ended_by']} at iteration {final['warmup_ended_at']}")
    summary["model_log_seconds"] = mlflow_inputs.log_final_model(c, run_id, model)
    tracking.log_metrics(c, run_id, summary, final["iterations"])
    log_curve(c, run_id, f"{run.run_name} ({data.description}, budget {run.budget:g})")
    c.set_terminated(run_id, "FINISHED")
    ckpt.unlink(missing_ok=True)
    log(f"{run.run_name}: FINISHED in {wall:.0f}s: test_error {final.get('test_error', float('nan')):.2f}%"
        f"{_val(final)} ({data.description}, budget {run.budget:g})")
    return "finished"


def _record_failure(c, run: RunSpec, run_id: str, e: Exception) -> str:
    """The run ends FAILED with a `failure` tag that says why: `diverged` (not retried without --force),
    `bad_input` (a UserError, whose message is the whole story) or `error` (anything else, named by its type)."""
    if isinstance(e, Diverged | UserError):
        kind, message, said = "diverged" if isinstance(e, Diverged) else "bad_input", str(e), f"FAILED, {e}"
    else:
        kind, message = "error", f"{type(e).__name__}: {e}"
        said = f"FAILED with {message}"
    c.set_tag(run_id, "failure", kind)
    c.set_tag(run_id, "failure_message", message[:5000])
    c.set_terminated(run_id, "FAILED")
    log(f"{run.run_name}: {said}")
    return "diverged" if kind == "diverged" else "failed"


def execute_offline(run: RunSpec, arrays: Arrays, device: torch.device, out: Path, force: bool = False,
                    progress: bool = True) -> str:
    """Train without MLflow (the GPU machine has none) into `out/<spec_hash>/`; `import` logs it later.

    The folder holds the checkpoint and the evaluation history while the run is going (a killed run
    resumes from them), and record.json + model/ (an MLflow PyTorch model) once it is done, the same content
    `execute` logs.
    """
    spec_hash = run.spec_hash(arrays.data_id)
    folder = out / spec_hash
    record_path, history_path, ckpt = folder / "record.json", folder / "history.jsonl", folder / "checkpoint.pt"
    if force:  # start afresh, as `execute --force` does
        for p in (record_path, history_path, ckpt):
            p.unlink(missing_ok=True)
        shutil.rmtree(folder / mlflow_inputs.MODEL_NAME, ignore_errors=True)
    if record_path.exists():
        log(f"{run.run_name}: already recorded in {record_path}; skipped (--force to run again)")
        return "skipped"
    folder.mkdir(parents=True, exist_ok=True)
    data = to_device(arrays, run.spec.data, device, param_dtype(run.spec))
    if not ckpt.exists():
        history_path.unlink(missing_ok=True)
    log(f"{run.run_name}: offline run into {folder} on {device_name(device)}, {data.description}, budget "
        f"{run.budget:g} ({run.spec.schedule.total_iters} iterations)" + (", resuming" if ckpt.exists() else ""))

    def on_eval(step: int, metrics: dict[str, float]) -> bool:
        with history_path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if not progress:
            log_eval_point(run, step, metrics)
        return False

    t0 = time.perf_counter()
    status, final, model = "FINISHED", {}, None
    try:
        final, model = train(run, data, device, checkpoint=ckpt, on_eval=on_eval, progress=progress)
    except Diverged as e:
        status, final = "FAILED", {"failure": "diverged", "failure_message": str(e)}
    by_step = {}
    if history_path.exists():  # a resumed run may repeat the evaluation it was killed after: keep the last
        for point in map(json.loads, history_path.read_text().splitlines()):
            by_step[point["step"]] = point
    record = {"group": run.group, "run_name": run.run_name, "status": status,
              "tags": run_tags(run, arrays, data.description, device), "params": run_params(run),
              "spec_yaml": resolved_yaml(run), "dataset": run_dataset(arrays, data),
              "history": [by_step[k] for k in sorted(by_step)],
              "summary": {"final_iteration": final.get("iterations", 0), "train_seconds": final.get("train_seconds", 0),
                          "wall_seconds_this_attempt": time.perf_counter() - t0},
              "final": final}
    if model is not None:
        mlflow_inputs.save_final_model(folder / mlflow_inputs.MODEL_NAME, model)
    tmp = folder / "record.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, record_path)  # the record appears whole or not at all
    ckpt.unlink(missing_ok=True)
    history_path.unlink(missing_ok=True)
    log(f"{run.run_name}: {status} in {record['summary']['wall_seconds_this_attempt']:.0f}s: test_error "
        f"{final.get('test_error', float('nan')):.2f}% ({data.description}, budget {run.budget:g}) -> {record_path}")
    return "finished" if status == "FINISHED" else "diverged"


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
