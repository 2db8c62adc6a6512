"""A run as one trial of an Optuna study: an MLflow child run of the study's run, scored on the validation split.

A trial lives the life of any run (harness.batch.life), with three differences that make it a trial: it is never
skipped or resumed (each trial is a new sample; a killed one is Optuna's FAIL and the study re-samples), it measures
no test numbers (the test split is not even loaded for tuning), and at each evaluation point it reports its
validation error to the study, whose pruner may end it there (PRUNED). This module knows no Optuna: the study's side
comes in as `TrialOf.report`, so that tracking stays below the tune command.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from mlflow.entities import Param

from harness.core.data import Arrays, DeviceData
from harness.core.devices import device_name
from harness.core.identity import RunIdentity
from harness.core.meter import Diverged
from harness.core.result import Result
from harness.core.spec import RunSpec
from harness.tracking import inputs as mlflow_inputs
from harness.tracking import store as tracking
from harness.tracking.run_facts import log, log_eval_point, run_datasets, run_params
from harness.tracking.status import Status


class Pruned(Exception):
    """The study's pruner ended the trial at an evaluation point."""


@dataclass(frozen=True)
class TrialOf:
    """Which trial of which study a run is, and how it reports to the study."""

    study: str
    number: int
    parent_run_id: str  # the study's MLflow run
    experiment: str
    spec_file: str
    budget: float
    sampler_seed: int
    overrides: dict[str, object] = field(default_factory=dict)  # the sampled schedule, under the spec's dotted names
    report: Callable[[int, float], bool] = lambda step, val_error: False  # -> prune now?
    on_open: Callable[[str], None] = lambda run_id: None  # hears the child run's id (a trial's user attribute)


class ToTrial:
    """The trial's MLflow child run: its params are what it overrides, its state tag says how it ended (complete,
    pruned, failed), as optuna-dashboard and the study's parent run read it."""

    checkpoint = None  # a trial is never resumed
    tests = False

    def __init__(self, run: RunSpec, ident: RunIdentity, arrays: Arrays, device: torch.device, trial: TrialOf,
                 bars: bool):
        self.run, self.ident, self.arrays, self.device, self.trial, self.bars = run, ident, arrays, device, trial, bars
        self.spec_hash = f"{trial.study}-t{trial.number}"
        self.c = tracking.client()
        self.run_id = ""

    def hold(self):
        """Nothing to claim: Optuna hands each trial number to one worker."""
        return nullcontext()

    def settled(self) -> Status | None:
        return None

    def open(self, data: DeviceData) -> None:
        t = self.trial
        exp_id = tracking.experiment_id(self.c, t.experiment)
        settings = ", ".join(f"{k}={v}" for k, v in t.overrides.items())
        self.run_id = self.c.create_run(exp_id, run_name=self.spec_hash, tags={
            "mlflow.parentRunId": t.parent_run_id, "study_name": t.study, "trial_number": str(t.number),
            "role": "trial", "budget": f"{t.budget:g}", "data": data.description, "device": device_name(self.device),
            "sampler_seed": str(t.sampler_seed), "git_commit": tracking.git_commit(), **tracking.source_tags(),
            mlflow_inputs.NOTE: f"Trial {t.number} of Optuna study '{t.study}' ({t.spec_file}, budget {t.budget:g}), "
                                f"scored on the validation split: {settings}"}).info.run_id
        # the schedule as the trial trained it (its budget's iterations), as any run's params say it
        self.c.log_batch(self.run_id, params=[Param(k, v) for k, v in run_params(self.run).items()])
        mlflow_inputs.log_run_inputs(self.c, self.run_id, run_datasets(self.arrays, self.ident, self.run.spec))
        t.on_open(self.run_id)

    def on_eval(self, step: int, metrics: dict[str, float]) -> bool:
        tracking.log_metrics(self.c, self.run_id, metrics, step)
        if not self.bars:
            log_eval_point(self.run, step, metrics)
        if self.trial.report(step, metrics["val_error"]):
            raise Pruned(f"pruned at iteration {step} (val_error {metrics['val_error']:.2f})")
        return False

    def on_restart(self, line: str) -> None:
        """Never called: a trial has no checkpoint."""

    def _end(self, state: str, status: str, failure: str | None = None) -> None:
        self.c.set_tag(self.run_id, "state", state)
        if failure:
            self.c.set_tag(self.run_id, "failure", failure)
        self.c.set_terminated(self.run_id, status)

    def finished(self, final: Result, model: torch.nn.Module, wall: float) -> Status:
        self._end("complete", "FINISHED")
        return Status.FINISHED

    def failed(self, e: Exception) -> Status:
        if not self.run_id:  # it failed before its child run was made
            log(f"{self.run.run_name}: trial {self.trial.number} FAILED with {type(e).__name__}: {e}")
            return Status.FAILED
        if isinstance(e, Pruned):
            self._end("pruned", "KILLED")
            return Status.PRUNED
        self._end("failed", "FAILED", failure="diverged" if isinstance(e, Diverged) else None)
        log(f"{self.run.run_name}: trial {self.trial.number} FAILED with {type(e).__name__}: {e}")
        return Status.DIVERGED if isinstance(e, Diverged) else Status.FAILED

    def killed(self) -> None:
        """Ctrl-C: the trial is Optuna's FAIL; its child run says so."""
        if self.run_id:
            self._end("failed", "FAILED")
