"""`harness tune`: Optuna over the learning-rate schedule, scored on the validation split only.

The test split is not even read from disk here: the objective is the final validation error, pruning
reads intermediate validation errors, and a tuned schedule meets the test set once, as an ordinary spec
in `make reproduce-table`. Trials are MLflow child runs of one parent run per study. Storages, the study,
the search space and --export are harness.tune.study; this module is the command, its worker processes and the
trials' MLflow records.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from harness.batch.fastest import TrainPath, chosen, on_path
from harness.batch.life import DeviceCache, live
from harness.core.data import Arrays, data_tag, load_arrays
from harness.core.devices import device_name, pick_device, thread_share, worker_devices
from harness.core.schedule import eval_every
from harness.core.spec import RunSpec, Spec, TuneSpec, load_spec, require_validation, resolve_runs, with_overrides
from harness.core.tuning_schema import Pruning, pruning
from harness.errors import UserError
from harness.tracking import store as tracking
from harness.tracking.figures import study_figures
from harness.tracking.inputs import schema_of, split_datasets
from harness.tracking.sinks import Destination
from harness.tracking.status import Status
from harness.tracking.trial import TrialOf
from harness.tune.parent import EXPERIMENT, definition, parent_run, record_winner
from harness.tune.progress import TrialsProgress
from harness.tune.study import (
    export,
    finished,
    load_study,
    make_pruner,
    open_storage,
    open_study,
    requeue_cut_off,
    sampler_seed,
    suggest,
)


@dataclass(frozen=True)
class TuneOptions:
    """The command's options, read once from its command line (cli.cmd_tune) and never changed afterwards: each
    function takes the ones it needs, and what the parent works out for its workers travels as a Worker."""

    spec: str
    study: str | None  # None: the spec's file name
    storage: str
    trials: int  # finished (complete or pruned) trials to reach
    budget: float
    data: str
    workers: int
    heartbeat: int
    seed: int
    plots: str | None  # None: the plots go to the parent run only
    overrides: tuple[str, ...] = ()
    device: str | None = None
    export: str | None = None
    fastest: Path | None = None  # bench lines for this CPU's fastest path (harness.batch.fastest); None: as given

    def __post_init__(self):
        object.__setattr__(self, "overrides", tuple(self.overrides))
        object.__setattr__(self, "study", self.study or Path(self.spec).stem)


class Objective:
    """One worker's trials: each samples a schedule and lives as any run does (harness.batch.life), as an MLflow
    child run of the study's parent run (harness.tracking.trial) that reports its validation errors to the pruner;
    it returns the last one. Device data is made once per data section and dtype, not once per trial."""

    def __init__(self, o: TuneOptions, base: Spec, arrays: Arrays, device: torch.device, seed: int):
        self.o, self.base, self.arrays, self.device, self.seed = o, base, arrays, device, seed
        self.t = base.tune or TuneSpec()
        self.cache: DeviceCache = {}
        self.parent = parent_run(tracking.client(), o.study, definition(o.study, o.spec, o.budget, o.data, base))
        self.bars = o.workers == 1 and sys.stderr.isatty()  # K workers' bars would interleave

    def __call__(self, trial: optuna.Trial) -> float:
        overrides = suggest(trial, self.t, self.base)
        spec = with_overrides(self.base, overrides)
        # milestones sampled close together may merge at a small budget, as they always have for trials
        run: RunSpec = resolve_runs(self.o.spec, spec, self.o.budget, check_budget=False)[0]
        trial.set_user_attr("budget", self.o.budget)  # what --export labels the tuned spec with
        trial.set_user_attr("device", device_name(self.device))  # where its time was spent (the study's page)
        val_errors: list[float] = []

        def report(step: int, val_error: float) -> bool:
            val_errors.append(val_error)
            trial.report(val_error, step)
            return trial.should_prune()

        of = TrialOf(self.o.study, trial.number, self.parent, EXPERIMENT, self.o.spec, self.o.budget, self.seed,
                     overrides, report, on_open=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
        dest = Destination(progress=self.bars, system_metrics=False, trial=of)
        (status,) = live([run], self.arrays, self.device, dest, self.cache)
        if status == Status.PRUNED:
            raise optuna.TrialPruned(f"pruned after {len(val_errors)} evaluation point(s), val_error "
                                     f"{val_errors[-1]:.2f}")
        if status != Status.FINISHED:  # caught by optimize(): the trial is FAIL, the study goes on
            raise RuntimeError(f"trial {trial.number} {status}")
        return val_errors[-1]


def run_worker(o: TuneOptions, arrays, left: int, seed: int, prune: Pruning, path: TrainPath | None) -> None:
    """Run at most `left` trials (what the study lacked of --trials when the parent looked), and stop early
    once the study holds --trials finished ones: other workers on the same study finish trials too. The sampler
    draws from `seed` (study.sampler_seed, plus the worker's index); the trials train on `path` where --fastest
    found one (not part of a trial's spec hash, nor of the study's recorded overrides)."""

    base = load_spec(o.spec, o.overrides)
    if path is not None:
        base = on_path(base, path)
    device = pick_device(o.device)
    storage = open_storage(o.storage, o.heartbeat)
    study = optuna.create_study(study_name=o.study, storage=storage, direction="minimize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
                                pruner=make_pruner(prune))
    objective = Objective(o, base, arrays, device, seed)
    with TrialsProgress(o.study, o.trials, finished(study), objective.bars) as progress:
        study.optimize(objective, n_trials=left, catch=(RuntimeError,), callbacks=[
            MaxTrialsCallback(o.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)), progress])


@dataclass(frozen=True)
class Worker:
    """What the parent works out for one worker process."""

    device: str
    threads: int | None  # CPU threads it trains on; None: PyTorch's default
    left: int  # trials the study lacked when the parent looked
    seed: int  # its sampler's seed: the call's seed + its index
    prune: Pruning  # the study's pruner, as the parent recorded it
    path: TrainPath | None  # the path --fastest chose, or None: the spec's own


def worker_places(device_arg: str | None, workers: int) -> list[tuple[str, int | None]]:
    """Each worker's device and CPU threads, as `run --jobs` places its workers: dealt over the GPUs when there are
    several, and on a CPU the threads split between the workers (K workers on all cores each would thrash)."""

    device = pick_device(device_arg)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    threads = thread_share(workers) if device.type == "cpu" else None
    return [(d, threads) for d in worker_devices(device, workers, gpus)]


def work(o: TuneOptions, w: Worker) -> None:
    """A worker process's body: its own data (the test split never read), its own device and threads."""

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if w.threads:
        torch.set_num_threads(w.threads)
    try:
        run_worker(replace(o, device=w.device), load_arrays(o.data, with_test=False), w.left, w.seed, w.prune,
                   w.path)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker with its parent: the parent says it once
        sys.exit(130)


def run_workers(o: TuneOptions, left: int, seed: int, prune: Pruning, path: TrainPath | None) -> None:
    """min(--workers, left) processes on the one study, each started by calling `work` with the options and its
    Worker (the spawn context, a fresh interpreter: CUDA does not survive a fork); the parent makes the MLflow
    parent run first, so that they do not race for it."""
    spawn = multiprocessing.get_context("spawn")
    places = worker_places(o.device, min(o.workers, left))
    procs = [spawn.Process(target=work, args=(o, Worker(device, threads, left, seed + i, prune, path)),
                           name=f"tune-worker-{i}") for i, (device, threads) in enumerate(places)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    codes = [p.exitcode for p in procs]
    if any(codes):
        print(f"tune: worker exit codes {codes}", file=sys.stderr)


def run_trials(o: TuneOptions, base: Spec) -> None:
    """Bring the study to --trials finished trials, here or in worker processes. --trials is a total to reach, not
    a number to add: a rerun of a finished study runs nothing, and each worker runs at most what is left (the
    workers' MaxTrialsCallback stops them there together)."""

    first = resolve_runs(o.spec, base, o.budget)[0]  # checks --budget before a study
    total = first.spec.schedule.total_iters
    path = None
    if o.fastest is not None:
        path = chosen(o.fastest, pick_device(o.device), [first])
        o = replace(o, workers=path.jobs) if path else o
    prune = pruning(base.tune or TuneSpec(), total, eval_every(total, base.eval_points))
    arrays = load_arrays(o.data, with_test=False)  # the test split is never read for tuning
    study = open_study(o.study, o.storage, o.heartbeat, {
        "budget": o.budget, "data_id": arrays.data_id, "data": str(o.data), "spec": str(o.spec),
        "overrides": list(o.overrides)}, prune)
    datasets = split_datasets(arrays.data_id, data_tag(arrays, base.data), base.data.split_seed,
                              schema_of(arrays.x_train, arrays.y_train))
    parent_run(tracking.client(), o.study, definition(o.study, o.spec, o.budget, o.data, base), datasets)  # first
    if o.storage.startswith("journal:") and (again := requeue_cut_off(study)):
        print(f"tune: trial(s) {', '.join(map(str, again))} of study '{o.study}' were cut off (RUNNING in "
              f"{o.storage} with no process left): failed, and their parameters run again first", file=sys.stderr)
    left = o.trials - finished(study)
    seed = sampler_seed(study, o.seed)
    if left <= 0:
        print(f"tune: study '{o.study}' already has {o.trials - left} finished trials (--trials {o.trials}); "
              "nothing to run", file=sys.stderr)
    elif o.workers > 1:
        run_workers(o, left, seed, prune, path)
    else:
        run_worker(o, arrays, left, seed, prune, path)


def _fail_dead_trials(c, exp_id: str, study_name: str, trials) -> None:
    """A worker killed mid-trial leaves its child run RUNNING; Optuna has failed the trial by now."""

    state_of = {str(t.number): t.state for t in trials}
    for r in c.search_runs([exp_id], f"tags.study_name = '{study_name}' and tags.role = 'trial'", max_results=5000):
        if r.info.status == "RUNNING" and state_of.get(r.data.tags.get("trial_number")) == TrialState.FAIL:
            c.set_tag(r.info.run_id, "state", "failed")
            c.set_tag(r.info.run_id, "failure", "worker died (stale heartbeat)")
            c.set_terminated(r.info.run_id, "FAILED")


def _plots(c, parent: str, study, out: Path | None = None) -> None:
    """Optuna's plots as artifacts of the study's parent run (folder `optuna`), and into `out` only where --plots
    names one: reports/tuning/ is `report`'s to write, from the Optuna storage."""

    with tempfile.TemporaryDirectory() as tmp:
        for path in study_figures(study, out or Path(tmp)):
            c.log_artifact(parent, str(path), "optuna")


def finish(study, o: TuneOptions, base: Spec) -> dict:
    """Tag the best trial, record it on the parent run, log Optuna's plots there (and into --plots), return the
    summary."""
    name = study.study_name
    trials = study.get_trials(deepcopy=False)
    counted = Counter(t.state for t in trials)
    count = {s.name.lower(): counted[s] for s in TrialState}  # in Optuna's order of states
    c = tracking.client()
    exp_id = tracking.experiment_id(c, EXPERIMENT)
    parent = parent_run(c, name, definition(name, o.spec, study.user_attrs.get("budget", o.budget), o.data, base))
    summary = {"study": name, "trials": len(trials), **{k: v for k, v in count.items() if v}}
    _fail_dead_trials(c, exp_id, name, trials)
    if any(t.state == TrialState.COMPLETE for t in trials):
        best = study.best_trial
        summary.update(best_trial=best.number, best_val_error=round(best.value, 2), best_params=best.params)
        for r in c.search_runs([exp_id], f"tags.study_name = '{name}' and tags.role = 'trial'", max_results=5000):
            c.set_tag(r.info.run_id, "best", str(r.data.tags.get("trial_number") == str(best.number)).lower())
        tracking.log_metrics(c, parent, {"best_val_error": best.value, "n_trials": len(trials),
                                         "n_pruned": count.get("pruned", 0)}, 0)
        c.set_tag(parent, "best_trial", str(best.number))
        record_winner(c, parent, best.number, best.value, best.params)
        _plots(c, parent, study, Path(o.plots) / name if o.plots else None)
    c.set_terminated(parent, "FINISHED")  # a later `tune` of the same study reopens nothing: it logs to it again
    return summary


def main(o: TuneOptions) -> int:

    # Optuna's INFO lines ("Using an existing study ...") repeat ours and would make a one-line error two lines
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = load_spec(o.spec, o.overrides)  # validates spec and its tune: section before anything starts
    require_validation(base, o.spec, "tune")  # trials are scored on the validation split: it must have one
    if base.tune is None:
        print(f"tune: {o.spec} has no tune: section; using the default search space", file=sys.stderr)
    if o.trials < 0:
        raise UserError(f"--trials {o.trials}: expected the number of finished trials to reach (0 or more)")
    t0 = time.perf_counter()
    if o.trials:
        run_trials(o, base)
    study = load_study(o.storage, o.heartbeat, o.study)
    summary = finish(study, o, base)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    print("tune: " + ", ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)
    if o.export:
        export(study, base, o.spec, Path(o.export))
    return 0
