"""A run's destination without MLflow (`run --offline`): a folder per run, which `results import` logs later.

The GPU machine has no MLflow store; a run there writes `out/<spec_hash>/` and the records travel back as files.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from harness.core.data import Arrays, DeviceData
from harness.core.devices import device_name
from harness.core.identity import RunIdentity
from harness.core.meter import Diverged
from harness.core.result import Result
from harness.core.spec import RunSpec
from harness.tracking import inputs as mlflow_inputs
from harness.tracking.run_facts import (
    content_digest,
    ending_line,
    log,
    log_eval_point,
    named_metrics,
    resolved_yaml,
    run_datasets,
    run_params,
    run_tags,
)
from harness.tracking.status import Status


class ToFolder:
    """`out/<spec_hash>/` without MLflow (the GPU machine has none); `import` logs it later. While the run goes the
    folder holds the checkpoint and the evaluation history (a killed run resumes from them); once it ends,
    record.json (+ model/, an MLflow PyTorch model): the same content ToMlflow logs."""

    tests = True  # test numbers at each evaluation point

    def __init__(self, run: RunSpec, ident: RunIdentity, arrays: Arrays, device: torch.device, out: Path, force: bool,
                 bars: bool, where: str = ""):
        self.run, self.arrays, self.device, self.force, self.bars, self.where = \
            run, arrays, device, force, bars, where
        self.ident, self.spec_hash = ident, ident.spec_hash
        self.folder = out / self.spec_hash
        self.record, self.history = self.folder / "record.json", self.folder / "history.jsonl"
        self.checkpoint = self.folder / "checkpoint.pt"
        self.t0, self.started = time.perf_counter(), int(time.time() * 1000)

    def hold(self):
        """Nothing to claim: an offline run's folder is this machine's own."""
        return nullcontext()

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
        if not self.bars:
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
        tags = run_tags(run, self.ident, self.device)
        if model is not None:
            tags["weights_sha256"] = mlflow_inputs.weights_sha256(model)
        summary = {"final_iteration": final.get("iterations", 0), "train_seconds": final.get("train_seconds", 0),
                   "wall_seconds_this_attempt": wall}
        record = {"format": 2, "group": run.group, "run_name": run.run_name, "status": status, "tags": tags,
                  "params": run_params(run), "spec_yaml": resolved_yaml(run),
                  "dataset": run_datasets(self.arrays, self.ident, run.spec)["train"],
                  "history": [named_metrics(by_step[k]) for k in sorted(by_step)], "summary": named_metrics(summary),
                  "final": final, "start_time": self.started, "end_time": int(time.time() * 1000)}
        record["digest"] = content_digest(record)
        if model is not None:
            mlflow_inputs.save_final_model(self.folder / mlflow_inputs.MODEL_NAME, model)
        tmp = self.folder / "record.json.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.record)  # the record appears whole or not at all
        self.checkpoint.unlink(missing_ok=True)
        self.history.unlink(missing_ok=True)
        log(ending_line(run, status, wall, final, data, self.where) + f" -> {self.record}")
