"""One resolved run, end to end: find or create its MLflow run, train (or resume), record the outcome.

A batch of runs must survive one bad run, so every failure is recorded on that run (status FAILED and a
`failure` tag) and reported back as a status instead of an exception.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from harness import tracking
from harness.data import Arrays, to_device
from harness.errors import UserError
from harness.plots import learning_curve
from harness.spec import RunSpec, flatten
from harness.train import Diverged, param_dtype, train


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    fig = learning_curve(history, title)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "learning_curve.png"
        fig.savefig(path)
        c.log_artifact(run_id, str(path))
    import matplotlib.pyplot as plt

    plt.close(fig)


def execute(run: RunSpec, arrays: Arrays, device: torch.device, force: bool = False,
            progress: bool = True) -> str:
    """Returns 'finished', 'skipped', 'diverged' or 'failed'."""
    from mlflow.entities import Param

    c = tracking.client()
    exp_id = tracking.experiment_id(c, run.group)
    spec_hash = run.spec_hash(arrays.data_id)
    ckpt = tracking.store_root() / "checkpoints" / f"{spec_hash}.pt"
    existing = tracking.find_run(c, exp_id, spec_hash)
    if existing is not None and not force:
        status = existing.info.status
        if status == "FINISHED":
            log(f"{run.run_name}: already FINISHED in MLflow (run {existing.info.run_id}); skipped "
                f"(--force to run again)")
            return "skipped"
        if existing.data.tags.get("failure") == "diverged":
            log(f"{run.run_name}: diverged before (run {existing.info.run_id}); skipped (--force to retry)")
            return "diverged"
        run_id = existing.info.run_id
        data = to_device(arrays, run.spec.data, device, param_dtype(run.spec))
        c.update_run(run_id, status="RUNNING")
        where = f"iteration checkpoint {ckpt.name}" if ckpt.exists() else "the start (no checkpoint yet)"
        log(f"{run.run_name}: resuming MLflow run {run_id} ({status}) from {where}")
    else:
        data = to_device(arrays, run.spec.data, device, param_dtype(run.spec))  # only for runs that train
        ckpt.unlink(missing_ok=True)
        tags = {"spec_name": run.name, "spec_hash": spec_hash, "budget": f"{run.budget:g}",
                "data": data.description, "data_id": arrays.data_id, "device": device_name(device),
                "git_commit": tracking.git_commit(), "spec_file": run.source_file,
                "official_test_set": str(arrays.is_official_full and run.budget == 1.0).lower()}
        r = c.create_run(exp_id, run_name=run.run_name, tags=tags)
        run_id = r.info.run_id
        c.log_batch(run_id, params=[Param(k, v) for k, v in run_params(run).items()])
        c.log_text(run_id, resolved_yaml(run), "spec.yaml")
        log(f"{run.run_name}: MLflow run {run_id} in experiment '{run.group}' on {device_name(device)}, "
            f"{data.description}, budget {run.budget:g} ({run.spec.schedule.total_iters} iterations)")

    log_seconds = [0.0]

    def on_eval(step: int, metrics: dict[str, float]) -> bool:
        log_seconds[0] += tracking.log_metrics(c, run_id, metrics, step)
        return False

    t0 = time.perf_counter()
    try:
        final, model = train(run, data, device, checkpoint=ckpt, on_eval=on_eval, progress=progress)
    except Diverged as e:
        c.set_tag(run_id, "failure", "diverged")
        c.set_tag(run_id, "failure_message", str(e))
        c.set_terminated(run_id, "FAILED")
        log(f"{run.run_name}: FAILED, {e}")
        return "diverged"
    except KeyboardInterrupt:
        c.set_terminated(run_id, "KILLED")
        raise
    except UserError as e:
        c.set_tag(run_id, "failure", "bad_input")
        c.set_tag(run_id, "failure_message", str(e))
        c.set_terminated(run_id, "FAILED")
        log(f"{run.run_name}: FAILED, {e}")
        return "failed"
    except Exception as e:  # noqa: BLE001 - recorded on the run; the batch goes on
        c.set_tag(run_id, "failure", "error")
        c.set_tag(run_id, "failure_message", f"{type(e).__name__}: {e}"[:5000])
        c.set_terminated(run_id, "FAILED")
        log(f"{run.run_name}: FAILED with {type(e).__name__}: {e}")
        return "failed"
    wall = time.perf_counter() - t0
    summary = {"final_iteration": final["iterations"], "train_seconds": final["train_seconds"],
               "mlflow_log_seconds": log_seconds[0]}
    if "stopped_early_at" in final:
        summary["stopped_early_at"] = final["stopped_early_at"]
    tracking.log_metrics(c, run_id, summary, final["iterations"])
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "model.pt").write_bytes(buf.getvalue())
        c.log_artifact(run_id, str(Path(d) / "model.pt"))
    log_curve(c, run_id, f"{run.run_name} ({data.description}, budget {run.budget:g})")
    c.set_terminated(run_id, "FINISHED")
    ckpt.unlink(missing_ok=True)
    log(f"{run.run_name}: FINISHED in {wall:.0f}s: test_error {final.get('test_error', float('nan')):.2f}% "
        f"val_error {final['val_error']:.2f}% ({data.description}, budget {run.budget:g})")
    return "finished"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    import platform

    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
