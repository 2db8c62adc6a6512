"""The study's MLflow run: the parent of its trials, holding what the study is as params (what it searches, how it
samples and prunes, what it minimises, at which budget on which data), a description, its source and the data its
trials train on, and, once trials have finished, its winner.

Optuna's own MLflow callback (optuna-integration's MLflowCallback) logs each trial as a run of the sampled values;
the trials here are runs of the harness (harness.tracking.trial: the resolved schedule, its curves, its dataset), so
the parent is made here too, in the same store and experiment.
"""

from __future__ import annotations

from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from harness.core.spec import Spec, TuneSpec, flatten
from harness.tracking import inputs as mlflow_inputs
from harness.tracking import store as tracking
from harness.tracking.run_facts import param_text

EXPERIMENT = "tuning"
SAMPLER = "TPESampler(n_startup_trials=5), seeded per worker (tag sampler_seed of each trial)"


def definition(study: str, spec_file: str, budget: float, data: str, base: Spec) -> dict[str, str]:
    """The study as params: its search space under search.*, how it samples and prunes, what it minimises."""
    t = base.tune or TuneSpec()
    space = {f"search.{k}": param_text(v) for k, v in flatten(t.model_dump(mode="json")).items() if v is not None}
    return {"study": study, "spec_file": spec_file, "budget": f"{budget:g}", "data": data, "direction": "minimize",
            "objective": "val_error: the trial's validation error at its last evaluation point",
            "sampler": SAMPLER, "pruner": t.pruner, **space}


def parent_run(c, study: str, params: dict[str, str], datasets: dict | None = None) -> str:
    """The study's MLflow run, found by its tags or made by the first process that asks (with the study's
    definition, description, source and the trials' datasets), so that every worker's trials hang under one
    parent."""
    exp_id = tracking.experiment_id(c, EXPERIMENT)
    runs = c.search_runs([exp_id], filter_string=f"tags.study_name = '{study}' and tags.role = 'study'",
                         max_results=1)
    if runs:
        return runs[0].info.run_id
    note = (f"Optuna study '{study}' over the learning-rate schedule of {params['spec_file']} at budget "
            f"{params['budget']} on {params['data']}: each child run is one trial, scored on the validation split "
            "only (the test split is never read); the params say what it searches and how.")
    run_id = c.create_run(exp_id, run_name=f"study-{study}", tags={
        "study_name": study, "role": "study", "spec_file": params["spec_file"], "budget": params["budget"],
        mlflow_inputs.NOTE: note, "git_commit": tracking.git_commit(), **tracking.source_tags()}).info.run_id
    c.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    if datasets:
        mlflow_inputs.log_run_inputs(c, run_id, datasets)
    return run_id


def record_winner(c, parent: str, trial_number: int, val_error: float, params: dict) -> None:
    """The best trial as params of the parent (best.trial, best.val_error, best.<name> of each sampled value). A
    param once logged cannot change in MLflow: where a later call of the study found a better trial, the winner so
    far stays in the params and the new one goes to tags of the same names."""
    winner = {"best.trial": str(trial_number), "best.val_error": f"{val_error:.4g}",
              **{f"best.{k}": param_text(v) for k, v in params.items()}}
    try:
        c.log_batch(parent, params=[Param(k, v) for k, v in winner.items()])
    except MlflowException:
        for k, v in winner.items():
            c.set_tag(parent, k, v)
