"""Where one run's numbers go while it trains and when it ends: an MLflow run, or a folder for `run --offline`.

A run alone (harness.batch.one) and a run in a group (harness.batch.grouped) go through the same steps, so both record
the same things: `settled` (a run already done is not trained again), `open` (a new run, or the one a kill left,
resumed from its checkpoint), `on_eval` and `on_restart` while it trains, then `finished`, `failed` or `killed`.
A batch must survive one bad run, so a failure is recorded on its run (MLflow: status FAILED and a `failure` tag)
and handed back as a Status, not an exception. `open_sink` is the one place that picks the destination.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import yaml

from harness.core.data import Arrays, DeviceData, cifar10_test_error
from harness.core.devices import device_name
from harness.core.families import FAMILIES
from harness.core.result import Result
from harness.core.schedule import eval_every
from harness.core.spec import RunSpec, flatten
from harness.core.train import Diverged
from harness.errors import UserError
from harness.tracking import inputs as mlflow_inputs
from harness.tracking import store as tracking
from harness.tracking.claims import BESIDE_THE_STORE, Places
from harness.tracking.figures import learning_curve
from harness.tracking.status import Status


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
    return yaml.safe_dump(body, sort_keys=False)


UNUSED = {"optimizer.name": {"sgd": ("betas",), "adam": ("momentum", "nesterov")},
          "schedule.name": {f.name: f.ignores for f in FAMILIES.values()}}  # fields the choice ignores


def meaningful(flat: dict[str, str]) -> dict[str, str]:
    """The params that mean something for this run, so the runs table compares what differs: no field the
    optimizer or schedule ignores (`betas` under SGD), no unset (None) field, none of the spec's labels (its
    name is the spec_name tag, `heavy` a batch option)."""
    dropped = {f"{key.split('.')[0]}.{f}" for key, by in UNUSED.items() for f in by.get(flat.get(key), ())}
    return {k: v for k, v in flat.items() if k not in dropped and k not in ("name", "heavy") and v != "None"}


def run_params(run: RunSpec) -> dict[str, str]:
    flat = flatten(run.spec.model_dump(mode="json", exclude={"seeds", "description", "tune", "tuned"}))
    flat.update(seed=run.seed, budget=run.budget)
    return meaningful({k: str(v) for k, v in flat.items()})


def _named(metrics: dict) -> dict:
    """Metrics under the names MLflow holds them by (bookkeeping under timing/), as a record keeps them."""
    return {tracking.metric_name(k): v for k, v in metrics.items()}


def log_curve(c, run_id: str, title: str) -> None:
    history = {k: tracking.metric_history(c, run_id, k) for k in ("train_error", "val_error", "test_error")}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "learning_curve.png"
        learning_curve(history, title, path)
        c.log_artifact(run_id, str(path))


def run_tags(run: RunSpec, arrays: Arrays, data: DeviceData, device: torch.device) -> dict[str, str]:
    """The run's identity and what its numbers may be called: `official_test_set` true is CIFAR-10 test error
    (all 50k images trained, the official test set, budget 1.0); `tested_on_official` and `full_training_data` say
    each part alone, and the `data` tag names the sizes."""
    return {"spec_name": run.name, "spec_hash": run.spec_hash(arrays.data_id), "budget": f"{run.budget:g}",
            "data": data.description, "data_id": arrays.data_id, "device": device_name(device),
            "git_commit": tracking.git_commit(), "spec_file": run.source_file, "torch": torch.__version__,
            "official_test_set": str(cifar10_test_error(data, run.budget)).lower(),
            "tested_on_official": str(data.official_test).lower(),
            "full_training_data": str(data.full_training_data).lower(),
            mlflow_inputs.NOTE: run.spec.description, **tuned_tags(run.spec), **tracking.source_tags()}


def tuned_tags(spec) -> dict[str, str]:
    """A tuned spec's provenance as tags (tuned.study, tuned.budget, ...): where its schedule came from."""
    t = spec.tuned
    return {} if t is None else {f"tuned.{k}": f"{v:g}" if isinstance(v, float) else str(v)
                                 for k, v in t.model_dump().items()}


def run_dataset(arrays: Arrays, data: DeviceData) -> dict[str, str]:
    return mlflow_inputs.dataset(arrays.x_train, arrays.y_train, arrays.data_id, data.sizes)


def _ending(run: RunSpec, status: str, wall: float, final: dict, data: DeviceData, where: str = "") -> str:
    return (f"{run.run_name}: {status} in {wall:.0f}s{where}:{_errors(final) or ' no error measured'} "
            f"({data.description}, budget {run.budget:g})")


class Sink(Protocol):
    """One run's destination, in the order a trainer calls it (the module docstring)."""

    spec_hash: str
    checkpoint: Path

    def settled(self) -> Status | None: ...
    def open(self, data: DeviceData) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float]) -> bool: ...
    def on_restart(self, line: str) -> None: ...
    def finished(self, final: Result, model: torch.nn.Module, wall: float) -> Status: ...
    def failed(self, e: Exception) -> Status: ...
    def killed(self) -> None: ...


@dataclass(frozen=True)
class Destination:
    """Where a run writes and how, as one value from the command line to the sink: `run`'s and `table`'s options
    hand it down whole (BatchOptions.destination) instead of field by field."""

    offline: Path | None = None  # no MLflow: each run into offline/<spec_hash>/ (`run --offline`)
    places: Places = BESIDE_THE_STORE  # where claims and checkpoints live beside the MLflow store
    force: bool = False  # start afresh even where a run of the spec exists
    progress: bool = True  # bars; False: a line per evaluation point
    system_metrics: bool = True  # MLflow samples the machine while a run trains (system/... metrics)


def open_sink(run: RunSpec, arrays: Arrays, device: torch.device, dest: Destination, where: str = "") -> Sink:
    """The run's folder under `dest.offline` (`run --offline`), else its MLflow run with its checkpoint in
    `dest.places` (and, with `dest.system_metrics`, MLflow's sampling of the machine while it trains)."""
    if dest.offline is not None:
        return ToFolder(run, arrays, device, dest.offline, dest.force, dest.progress, where)
    return ToMlflow(run, arrays, device, dest.force, dest.progress, where, dest.places.checkpoints(),
                    dest.system_metrics)


class ToMlflow:
    """The run's own MLflow run, found again by its spec hash; its checkpoint is in `checkpoints`."""

    def __init__(self, run: RunSpec, arrays: Arrays, device: torch.device, force: bool, progress: bool,
                 where: str, checkpoints: Path, system_metrics: bool = True):
        self.c = tracking.client()
        self.run, self.arrays, self.device, self.force, self.progress, self.where = \
            run, arrays, device, force, progress, where
        self.exp_id = tracking.experiment_id(self.c, run.group)
        self.spec_hash = run.spec_hash(arrays.data_id)
        self.checkpoint = checkpoints / f"{self.spec_hash}.pt"
        self.system_metrics = system_metrics
        self.existing = None
        self.run_id = ""
        self.log_seconds = 0.0
        self.monitor = None  # MLflow's system-metrics thread while the run trains

    def settled(self) -> Status | None:
        """SKIPPED for a FINISHED run and DIVERGED for one that diverged before: neither trains again without
        --force (a diverged recipe diverges again); None for a run to train or resume."""
        self.existing = None if self.force else tracking.find_run(self.c, self.exp_id, self.spec_hash)
        if self.existing is None:
            return None
        run, info = self.run, self.existing.info
        if info.status == "FINISHED":
            log(f"{run.run_name}: already FINISHED in MLflow (run {info.run_id}); skipped (--force to run again)")
            return Status.SKIPPED
        if self.existing.data.tags.get("failure") == "diverged":
            log(f"{run.run_name}: diverged before (run {info.run_id}); skipped (--force to retry)")
            return Status.DIVERGED
        return None

    def open(self, data: DeviceData) -> None:
        """Resumes the run a kill left, or creates one with the tags, params and resolved spec that find it again (a
        checkpoint left by an earlier run of the same spec, under --force, is not resumed from)."""
        from mlflow.entities import Param

        run, c, self.data = self.run, self.c, data
        if self.existing is not None:
            self.run_id = self.existing.info.run_id
            c.update_run(self.run_id, status="RUNNING")
            at = f"iteration checkpoint {self.checkpoint.name}" if self.checkpoint.exists() else \
                "the start (no checkpoint yet)"
            log(f"{run.run_name}: resuming MLflow run {self.run_id} ({self.existing.info.status}) from {at}")
            self.monitor = self._monitor()
            return
        self.checkpoint.unlink(missing_ok=True)
        r = c.create_run(self.exp_id, run_name=run.run_name,
                         tags=run_tags(run, self.arrays, data, self.device))
        self.run_id = r.info.run_id
        c.log_batch(self.run_id, params=[Param(k, v) for k, v in run_params(run).items()])
        c.log_text(self.run_id, resolved_yaml(run), "spec.yaml")
        mlflow_inputs.log_run_inputs(c, self.run_id, run_dataset(self.arrays, data))
        self.monitor = self._monitor()
        log(f"{run.run_name}: MLflow run {self.run_id} in experiment '{run.group}' on {device_name(self.device)}, "
            f"{data.description}, budget {run.budget:g} ({run.spec.schedule.total_iters} iterations, evaluated every "
            f"{eval_every(run.spec.schedule.total_iters, run.spec.eval_points)})")

    def _monitor(self):
        return mlflow_inputs.system_metrics(self.run_id, tracking.tracking_uri()) if self.system_metrics else None

    def on_eval(self, step: int, metrics: dict[str, float]) -> bool:
        self.log_seconds += tracking.log_metrics(self.c, self.run_id, metrics, step)
        if not self.progress:
            log_eval_point(self.run, step, metrics)
        return False

    def on_restart(self, line: str) -> None:
        self.c.set_tag(self.run_id, "checkpoint_restart", line)

    def finished(self, final: Result, model: torch.nn.Module, wall: float) -> Status:
        """The summary metrics, the logged model, the learning curve, FINISHED; then the checkpoint goes."""
        c, run_id, data = self.c, self.run_id, self.data
        summary = {"final_iteration": final.iterations, "train_seconds": final.train_seconds,
                   "mlflow_log_seconds": self.log_seconds}
        if final.stopped_early_at is not None:
            summary["stopped_early_at"] = final.stopped_early_at
        if final.warmup_ended_by:  # "cap": the safety cap, not the training error, ended the ResNet-110 warm-up
            c.set_tag(run_id, "warmup_ended_by", f"{final.warmup_ended_by} at iteration {final.warmup_ended_at}")
        c.set_tag(run_id, "weights_sha256", mlflow_inputs.weights_sha256(model))
        summary["model_log_seconds"] = mlflow_inputs.log_final_model(c, run_id, model,
                                                                     mlflow_inputs.model_name(run_params(self.run)))
        tracking.log_metrics(c, run_id, summary, final.iterations)
        log_curve(c, run_id, f"{self.run.run_name} ({data.description}, budget {self.run.budget:g})")
        mlflow_inputs.stop(self.monitor)
        c.set_terminated(run_id, "FINISHED")
        self.checkpoint.unlink(missing_ok=True)
        log(_ending(self.run, "FINISHED", wall, final.metrics, data, self.where))
        return Status.FINISHED

    def failed(self, e: Exception) -> Status:
        """FAILED with a `failure` tag that says why: `diverged` (not retried without --force), `bad_input` (a
        UserError, whose message is the whole story) or `error` (anything else, named by its type)."""
        if isinstance(e, Diverged | UserError):
            kind, message, said = "diverged" if isinstance(e, Diverged) else "bad_input", str(e), f"FAILED, {e}"
        else:
            kind, message = "error", f"{type(e).__name__}: {e}"
            said = f"FAILED with {message}"
        self.c.set_tag(self.run_id, "failure", kind)
        self.c.set_tag(self.run_id, "failure_message", message[:5000])
        mlflow_inputs.stop(self.monitor)
        self.c.set_terminated(self.run_id, "FAILED")
        log(f"{self.run.run_name}: {said}")
        return Status.DIVERGED if kind == "diverged" else Status.FAILED

    def killed(self) -> None:
        """Ctrl-C: KILLED, the checkpoint kept; the next run of the spec resumes it."""
        mlflow_inputs.stop(self.monitor)
        self.c.set_terminated(self.run_id, "KILLED")


class ToFolder:
    """`out/<spec_hash>/` without MLflow (the GPU machine has none); `import` logs it later. While the run goes the
    folder holds the checkpoint and the evaluation history (a killed run resumes from them); once it ends,
    record.json (+ model/, an MLflow PyTorch model): the same content ToMlflow logs."""

    def __init__(self, run: RunSpec, arrays: Arrays, device: torch.device, out: Path, force: bool, progress: bool,
                 where: str = ""):
        self.run, self.arrays, self.device, self.force, self.progress, self.where = \
            run, arrays, device, force, progress, where
        self.spec_hash = run.spec_hash(arrays.data_id)
        self.folder = out / self.spec_hash
        self.record, self.history = self.folder / "record.json", self.folder / "history.jsonl"
        self.checkpoint = self.folder / "checkpoint.pt"
        self.t0, self.started = time.perf_counter(), int(time.time() * 1000)

    def settled(self) -> Status | None:
        if self.force:  # start afresh, as ToMlflow does under --force
            for p in (self.record, self.history, self.checkpoint):
                p.unlink(missing_ok=True)
            shutil.rmtree(self.folder / mlflow_inputs.MODEL_NAME, ignore_errors=True)
        if self.record.exists():
            log(f"{self.run.run_name}: already recorded in {self.record}; skipped (--force to run again)")
            return Status.SKIPPED
        return None

    def open(self, data: DeviceData) -> None:
        self.data = data
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.checkpoint.exists():
            self.history.unlink(missing_ok=True)
        run = self.run
        log(f"{run.run_name}: offline run into {self.folder} on {device_name(self.device)}, {data.description}, "
            f"budget {run.budget:g} ({run.spec.schedule.total_iters} iterations)"
            + (", resuming" if self.checkpoint.exists() else ""))
        self.t0, self.started = time.perf_counter(), int(time.time() * 1000)

    def on_eval(self, step: int, metrics: dict[str, float]) -> bool:
        with self.history.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if not self.progress:
            log_eval_point(self.run, step, metrics)
        return False

    def on_restart(self, line: str) -> None:
        """Said on stderr by harness.core.checkpoint already; the folder keeps no tags until the record is written."""

    def finished(self, final: Result, model: torch.nn.Module, wall: float) -> Status:
        self._write("FINISHED", final.as_dict(), model, wall)
        return Status.FINISHED

    def failed(self, e: Exception) -> Status:
        """A diverged run is recorded FAILED (as in MLflow, not retried); any other failure leaves no record and
        keeps the checkpoint, so that the next call resumes it."""
        if isinstance(e, Diverged):
            final = {"failure": "diverged", "failure_message": str(e)}
            self._write("FAILED", final, None, time.perf_counter() - self.t0)
            return Status.DIVERGED
        log(f"{self.run.run_name}: FAILED with {type(e).__name__}: {e} (no record written; a rerun resumes it)")
        return Status.FAILED

    def killed(self) -> None:
        """Ctrl-C: the checkpoint and the history stay; the next call resumes from them."""

    def _write(self, status: str, final: dict, model, wall: float) -> None:
        run, data = self.run, self.data
        by_step = {}
        if self.history.exists():  # a resumed run may repeat the evaluation it was killed after: keep the last
            for point in map(json.loads, self.history.read_text().splitlines()):
                by_step[point["step"]] = point
        tags = run_tags(run, self.arrays, data, self.device)
        if model is not None:
            tags["weights_sha256"] = mlflow_inputs.weights_sha256(model)
        summary = {"final_iteration": final.get("iterations", 0), "train_seconds": final.get("train_seconds", 0),
                   "wall_seconds_this_attempt": wall}
        record = {"format": 2, "group": run.group, "run_name": run.run_name, "status": status, "tags": tags,
                  "params": run_params(run), "spec_yaml": resolved_yaml(run), "dataset": run_dataset(self.arrays, data),
                  "history": [_named(by_step[k]) for k in sorted(by_step)], "summary": _named(summary),
                  "final": final, "start_time": self.started, "end_time": int(time.time() * 1000)}
        record["digest"] = content_digest(record)
        if model is not None:
            mlflow_inputs.save_final_model(self.folder / mlflow_inputs.MODEL_NAME, model)
        tmp = self.folder / "record.json.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.record)  # the record appears whole or not at all
        self.checkpoint.unlink(missing_ok=True)
        self.history.unlink(missing_ok=True)
        log(_ending(run, status, wall, final, data, self.where) + f" -> {self.record}")
