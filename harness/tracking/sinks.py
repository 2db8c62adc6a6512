"""Where one run's numbers go while it trains and when it ends: an MLflow run, a folder for `run --offline`
(harness.tracking.folder), or an Optuna trial's MLflow child run (harness.tracking.trial).

Every run lives the same life (harness.batch.life) through its sink, in the order a trainer calls it: `hold` (its
claim), `settled` (a run already done is not trained again), `open` (a new run, or the one a kill left, resumed
from its checkpoint), `on_eval` and `on_restart` while it trains, then `finished`, `failed` or `killed`. A batch
must survive one bad run, so a failure is recorded on its run (MLflow: status FAILED and a `failure` tag) and handed
back as a Status, not an exception. `open_sink` is the one place that picks the destination.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from mlflow.entities import Param

from harness.core.data import Arrays, DeviceData
from harness.core.devices import device_name
from harness.core.identity import RunIdentity
from harness.core.meter import Diverged
from harness.core.result import Result
from harness.core.schedule import eval_every
from harness.core.spec import RunSpec
from harness.errors import UserError
from harness.tracking import claims
from harness.tracking import inputs as mlflow_inputs
from harness.tracking import store as tracking
from harness.tracking.claims import BESIDE_THE_STORE, Places
from harness.tracking.experiments import experiment_name, find_group_run, run_experiment
from harness.tracking.folder import ToFolder
from harness.tracking.run_facts import (
    ending_line,
    log,
    log_curve,
    log_eval_point,
    resolved_yaml,
    resumed_elsewhere,
    run_datasets,
    run_params,
    run_tags,
)
from harness.tracking.status import Status
from harness.tracking.trial import ToTrial, TrialOf


class Sink(Protocol):
    """One run's destination, in the order a trainer calls it (the module docstring)."""

    spec_hash: str  # the run's key: two sinks with one key are one run
    checkpoint: Path | None  # None: the run is never resumed (a trial)
    bars: bool  # a progress bar; else a line per evaluation point
    tests: bool  # test numbers at each evaluation point (a trial measures none)
    def hold(self): ...
    def settled(self) -> Status | None: ...
    def open(self, data: DeviceData) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float]) -> bool: ...
    def on_restart(self, line: str) -> None: ...
    def finished(self, final: Result, model: torch.nn.Module, wall: float) -> Status: ...
    def failed(self, e: Exception) -> Status: ...
    def killed(self) -> None: ...


@dataclass(frozen=True)
class Destination:
    """Where a run writes and how, as one value from the command line to the sink: `run`'s, `table`'s and `tune`'s
    options hand it down whole instead of field by field."""

    offline: Path | None = None  # no MLflow: each run into offline/<spec_hash>/ (`run --offline`)
    places: Places = BESIDE_THE_STORE  # where claims and checkpoints live beside the MLflow store
    force: bool = False  # start afresh even where a run of the spec exists
    progress: bool = True  # bars; False: a line per evaluation point
    system_metrics: bool = True  # MLflow samples the machine while a run trains (system/... metrics)
    trial: TrialOf | None = None  # the run is this trial of an Optuna study

    def without_bars(self) -> Destination:
        """Lines instead of bars: several runs at once (a group, Ray tasks) would interleave their bars."""
        return replace(self, progress=False)


def open_sink(run: RunSpec, ident: RunIdentity, arrays: Arrays, device: torch.device, dest: Destination,
              where: str = "") -> Sink:
    """The trial's child run (`dest.trial`), the run's folder under `dest.offline` (`run --offline`), else its MLflow
    run with its checkpoint in `dest.places`."""
    if dest.trial is not None:
        return ToTrial(run, ident, arrays, device, dest.trial, dest.progress)
    if dest.offline is not None:
        return ToFolder(run, ident, arrays, device, dest.offline, dest.force, dest.progress, where)
    return ToMlflow(run, ident, arrays, device, dest, where)


class ToMlflow:
    """The run's own MLflow run, found again by its spec hash; its checkpoint is in `checkpoints`."""

    tests = True  # test numbers at each evaluation point

    def __init__(self, run: RunSpec, ident: RunIdentity, arrays: Arrays, device: torch.device, dest: Destination,
                 where: str = ""):
        self.c = tracking.client()
        self.run, self.arrays, self.device, self.force, self.bars, self.where = \
            run, arrays, device, dest.force, dest.progress, where
        self.places = dest.places
        self.exp_id = run_experiment(self.c, run.group, ident.data, run.budget)
        self.exp_name = experiment_name(run.group, ident.data, run.budget)
        self.ident, self.spec_hash = ident, ident.spec_hash
        self.checkpoint = dest.places.checkpoints() / f"{self.spec_hash}.pt"
        self.system_metrics = dest.system_metrics
        self.existing = None
        self.run_id = ""
        self.log_seconds = 0.0
        self.monitor = None  # MLflow's system-metrics thread while the run trains

    def hold(self):
        """The run's claim (harness.tracking.claims): one writer per run and checkpoint, whatever else runs it."""
        return claims.claimed(self.spec_hash, self.run.run_name, log, self.places)

    def settled(self) -> Status | None:
        """SKIPPED for a FINISHED run and DIVERGED for one that diverged before: neither trains again without
        --force (a diverged recipe diverges again); None for a run to train or resume."""
        self.existing = None if self.force else find_group_run(self.c, self.run.group, self.spec_hash)
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
        run, c, self.data = self.run, self.c, data
        if self.existing is not None:
            self.run_id = self.existing.info.run_id
            c.update_run(self.run_id, status="RUNNING")
            at = f"iteration checkpoint {self.checkpoint.name}" if self.checkpoint.exists() else \
                "the start (no checkpoint yet)"
            log(f"{run.run_name}: resuming MLflow run {self.run_id} ({self.existing.info.status}) from {at}")
            tags = self.existing.data.tags
            elsewhere = resumed_elsewhere(tags, self.existing.data.params, run, self.device)
            before = tags.get("resumed_on", "")
            if elsewhere and not before.endswith(elsewhere):  # each move once, in order
                c.set_tag(self.run_id, "resumed_on", f"{before}; then {elsewhere}" if before else elsewhere)
                log(f"{run.run_name}: started on {tags.get('device')}; goes on on {elsewhere} (tag resumed_on)")
            self.monitor = self._monitor()
            return
        self.checkpoint.unlink(missing_ok=True)
        r = c.create_run(self.exp_id, run_name=run.run_name,
                         tags=run_tags(run, self.ident, self.device))
        self.run_id = r.info.run_id
        c.log_batch(self.run_id, params=[Param(k, v) for k, v in run_params(run).items()])
        c.log_text(self.run_id, resolved_yaml(run), "spec.yaml")
        mlflow_inputs.log_run_inputs(c, self.run_id, run_datasets(self.arrays, self.ident, run.spec))
        self.monitor = self._monitor()
        log(f"{run.run_name}: MLflow run {self.run_id} in experiment '{self.exp_name}' on {device_name(self.device)}, "
            f"{data.description}, budget {run.budget:g} ({run.spec.schedule.total_iters} iterations, evaluated every "
            f"{eval_every(run.spec.schedule.total_iters, run.spec.eval_points)})")

    def _monitor(self):
        return mlflow_inputs.system_metrics(self.run_id, tracking.tracking_uri()) if self.system_metrics else None

    def on_eval(self, step: int, metrics: dict[str, float]) -> bool:
        self.log_seconds += tracking.log_metrics(self.c, self.run_id, metrics, step)
        if not self.bars:
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
        params = run_params(self.run)
        facts = mlflow_inputs.ModelFacts(params, final.metrics, run_datasets(self.arrays, self.ident, self.run.spec),
                                         final.iterations)
        summary["model_log_seconds"] = mlflow_inputs.log_final_model(c, run_id, model,
                                                                     mlflow_inputs.model_name(params), facts)
        tracking.log_metrics(c, run_id, summary, final.iterations)
        log_curve(c, run_id, f"{self.run.run_name} ({data.description}, budget {self.run.budget:g})")
        mlflow_inputs.stop(self.monitor)
        c.set_terminated(run_id, "FINISHED")
        self.checkpoint.unlink(missing_ok=True)
        log(ending_line(self.run, "FINISHED", wall, final.metrics, data, self.where))
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
