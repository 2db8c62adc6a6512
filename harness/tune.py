"""Optuna over the learning-rate schedule, scored on the validation split only.

The test split is not even read from disk here: the objective is the final validation error, pruning
reads intermediate validation errors, and a tuned schedule meets the test set once, as an ordinary spec
in `make reproduce-table`. Trials are MLflow child runs of one parent run per study.

Storage is an Optuna RDB URL (SQLite by default; PostgreSQL for many machines) with heartbeats, so a
worker killed mid-trial leaves a trial that the next worker marks FAIL (fail_stale_trials) instead of a
trial stuck in RUNNING, or `journal:PATH` (JournalStorage on a file) for many local processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import yaml

from harness import tracking
from harness.errors import UserError
from harness.spec import RunSpec, Spec, TuneSpec, load_spec, resolve_runs

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
EXPERIMENT = "tuning"


@contextmanager
def known_experimental():
    """Optuna warns (ExperimentalWarning) on every use of an API it marks experimental. We use two knowingly:
    RDBStorage's heartbeat_interval (how a killed worker's trial gets failed) and the matplotlib plots; their
    warnings are silenced around those calls only, so an experimental API we did not choose still warns."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        yield


def storage_file(url: str) -> Path | None:
    """The file of a `journal:PATH` or `sqlite:///PATH` storage (opening it creates it), else None."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    return tracking.sqlite_file(url)


def open_storage(url: str, heartbeat: int = 30):
    import optuna

    path = storage_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    with known_experimental():
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat)


def load_study(a):
    """The existing study named by --study, for finish and --export. A typo there must not end in Optuna's
    `KeyError: 'Record does not exist.'` traceback: say which studies the storage holds instead, and create
    nothing (opening a SQLite or journal file that is not there would create an empty one)."""
    import optuna

    path = storage_file(a.storage)
    names = []
    if path is None or path.exists():
        storage = open_storage(a.storage, a.heartbeat)
        names = sorted(optuna.get_all_study_names(storage))
    if a.study not in names:
        held = f"it holds {', '.join(names)}" if names else "it holds no studies"
        raise UserError(f"--study '{a.study}': no such study in --storage {a.storage} ({held}); check the name, "
                        "or run with --trials N to create it")
    return optuna.load_study(study_name=a.study, storage=storage)


def make_pruner(t: TuneSpec, total_iters: int, eval_every: int):
    import optuna

    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_every, max_resource=total_iters, reduction_factor=3)
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=eval_every)
    return optuna.pruners.NopPruner()


def suggest(trial, t: TuneSpec, base: Spec) -> dict:
    """Sample a schedule; returns spec overrides with milestones in paper iterations (scaled by budget later)."""
    p: dict = {}
    family = trial.suggest_categorical("family", t.families) if len(t.families) > 1 else t.families[0]
    p["schedule.name"] = family
    if t.lr:
        p["optimizer.lr"] = trial.suggest_float("lr", *t.lr, log=True)
    total = base.schedule.total_iters
    if family == "multistep" and t.milestone_fractions:
        fr = [trial.suggest_float(f"milestone_{i}", *r) for i, r in enumerate(t.milestone_fractions)]
        p["schedule.milestones"] = sorted({max(1, min(total - 1, round(f * total))) for f in fr})
    elif family != "multistep":
        p["schedule.milestones"] = []
    if t.gamma and family != "cosine":
        p["schedule.gamma"] = trial.suggest_float("gamma", *t.gamma, log=True)
    if t.warmup_iters:
        p["schedule.warmup_iters"] = trial.suggest_int("warmup_iters", *t.warmup_iters)
    return p


def apply(base: Spec, overrides: dict) -> Spec:
    raw = base.model_dump(mode="json")
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for k in parents:
            node = node[k]
        node[last] = value
    return Spec.model_validate(raw)


def _parent_run(c, exp_id: str, study: str, spec_path: str, budget: float) -> str:
    runs = c.search_runs([exp_id], filter_string=f"tags.study_name = '{study}' and tags.role = 'study'",
                         max_results=1)
    if runs:
        return runs[0].info.run_id
    r = c.create_run(exp_id, run_name=f"study-{study}",
                     tags={"study_name": study, "role": "study", "spec_file": spec_path, "budget": f"{budget:g}"})
    return r.info.run_id


def finished(study) -> int:
    """Trials that count towards --trials: complete or pruned (a failed trial is not counted; another is run)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def open_study(a, data_id: str):
    """Create the study and record on it what its trials run at, or check that a resumed one matches: validation
    errors at different budgets or on different data do not compare, and a study mixing them would crown the
    longest-trained trial rather than the best schedule. A study from before these were recorded takes them
    from the call that resumes it."""
    import optuna

    study = optuna.create_study(study_name=a.study, storage=open_storage(a.storage, a.heartbeat),
                                direction="minimize", load_if_exists=True)
    if "budget" not in study.user_attrs:
        for key, value in (("budget", a.budget), ("data_id", data_id), ("data", str(a.data)), ("spec", str(a.spec)),
                           ("overrides", list(a.overrides))):
            study.set_user_attr(key, value)
    ran = study.user_attrs  # read back: of two processes creating the study at once, the first to record wins
    if ran["budget"] != a.budget:
        raise UserError(f"--budget {a.budget:g}: study '{a.study}' was run at budget {ran['budget']:g}, and trials at "
                        f"two budgets do not compare; resume it with --budget {ran['budget']:g}, or name a new "
                        "study with --study")
    if ran["data_id"] != data_id:
        raise UserError(f"--data {a.data}: study '{a.study}' was run on {ran['data']} (data id {ran['data_id']}), "
                        f"not on this data (data id {data_id}); resume it with that data, or name a new study "
                        "with --study")
    return study


def run_worker(a, arrays, left: int, worker_index: int = 0) -> None:
    """Run at most `left` trials (what the study lacked of --trials when this process looked), and stop early
    once the study holds --trials finished ones: other workers on the same study finish trials too.

    The sampler's seed is a.sampler_seed + worker_index (see sampler_seed()): workers of one call draw different
    points, and so do the calls that resume a study."""
    import optuna
    from mlflow.entities import Param

    from harness.data import to_device
    from harness.runner import device_name
    from harness.train import Diverged, param_dtype, pick_device, train

    base = load_spec(a.spec, a.overrides)
    t = base.tune or TuneSpec()
    device = pick_device(a.device)
    storage = open_storage(a.storage, a.heartbeat)
    probe = resolve_runs(a.spec, base, a.budget)[0]
    eval_every = max(1, -(-probe.spec.schedule.total_iters // base.eval_points))
    seed = a.sampler_seed + worker_index
    study = optuna.create_study(study_name=a.study, storage=storage, direction="minimize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
                                pruner=make_pruner(t, probe.spec.schedule.total_iters, eval_every))
    c = tracking.client()
    exp_id = tracking.experiment_id(c, EXPERIMENT)
    parent = _parent_run(c, exp_id, a.study, a.spec, a.budget)
    cache: dict = {}

    def objective(trial) -> float:
        spec = apply(base, suggest(trial, t, base))
        run: RunSpec = resolve_runs(a.spec, spec, a.budget)[0]
        key = (spec.data.model_dump_json(), spec.dtype)
        if key not in cache:
            cache[key] = to_device(arrays, spec.data, device, param_dtype(spec))
        child = c.create_run(exp_id, run_name=f"{a.study}-t{trial.number}", tags={
            "mlflow.parentRunId": parent, "study_name": a.study, "trial_number": str(trial.number),
            "role": "trial", "budget": f"{a.budget:g}", "data": cache[key].description, "device": device_name(device),
            "sampler_seed": str(seed), "git_commit": tracking.git_commit()}).info.run_id
        c.log_batch(child, params=[Param(k, str(v)) for k, v in trial.params.items()])
        trial.set_user_attr("mlflow_run_id", child)
        trial.set_user_attr("budget", a.budget)  # what --export labels the tuned spec with

        def on_eval(step: int, m: dict) -> bool:
            tracking.log_metrics(c, child, m, step)
            trial.report(m["val_error"], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at iteration {step} (val_error {m['val_error']:.2f})")
            return False

        try:
            final, _ = train(run, cache[key], device, checkpoint=None, on_eval=on_eval, progress=False,
                             evaluate_test=False)
        except optuna.TrialPruned:
            c.set_tag(child, "state", "pruned")
            c.set_terminated(child, "KILLED")
            raise
        except Diverged as e:
            c.set_tag(child, "state", "failed")
            c.set_tag(child, "failure", "diverged")
            c.set_terminated(child, "FAILED")
            raise RuntimeError(str(e)) from None  # caught by optimize(): the trial is FAIL, the study goes on
        except BaseException:
            c.set_tag(child, "state", "failed")
            c.set_terminated(child, "FAILED")
            raise
        c.set_tag(child, "state", "complete")
        c.set_terminated(child, "FINISHED")
        print(f"trial {trial.number}: val_error {final['val_error']:.2f} {trial.params}", file=sys.stderr,
              flush=True)
        return final["val_error"]

    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    study.optimize(objective, n_trials=left, catch=(RuntimeError,),
                   callbacks=[MaxTrialsCallback(a.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))])


def sampler_seed(a, study) -> int:
    """--seed + the number of trials already in the study: the seed of worker 0 of this call (worker i adds i).
    TPE draws its first trials at random from its seed alone, so a study resumed with the bare --seed drew
    trial 0's point again; the trial count moves each resume to new points, and the same commands run again on
    a fresh study still draw the same ones. The parent reads the count once and hands the seed to its
    workers (--sampler-seed), so it does not depend on which worker started first."""
    return a.sampler_seed if a.sampler_seed is not None else a.seed + len(study.get_trials(deepcopy=False))


def finish(a, study) -> dict:
    """Tag the best trial, save and log Optuna's plots, print the summary."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    c = tracking.client()
    exp_id = tracking.experiment_id(c, EXPERIMENT)
    parent = _parent_run(c, exp_id, a.study, a.spec, study.user_attrs.get("budget", a.budget))
    summary = {"study": a.study, "trials": len(trials), **{k: v for k, v in count.items() if v}}
    state_of = {str(t.number): t.state for t in trials}
    for r in c.search_runs([exp_id], f"tags.study_name = '{a.study}' and tags.role = 'trial'", max_results=5000):
        # a worker killed mid-trial leaves its child run RUNNING; Optuna has failed the trial by now
        if r.info.status == "RUNNING" and state_of.get(r.data.tags.get("trial_number")) == TrialState.FAIL:
            c.set_tag(r.info.run_id, "state", "failed")
            c.set_tag(r.info.run_id, "failure", "worker died (stale heartbeat)")
            c.set_terminated(r.info.run_id, "FAILED")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        best = study.best_trial
        summary.update(best_trial=best.number, best_val_error=round(best.value, 2), best_params=best.params)
        for r in c.search_runs([exp_id], f"tags.study_name = '{a.study}' and tags.role = 'trial'", max_results=5000):
            c.set_tag(r.info.run_id, "best", str(r.data.tags.get("trial_number") == str(best.number)).lower())
        tracking.log_metrics(c, parent, {"best_val_error": best.value, "n_trials": len(trials),
                                         "n_pruned": count.get("pruned", 0)}, 0)
        c.set_tag(parent, "best_trial", str(best.number))
        out = Path(a.plots) / a.study
        out.mkdir(parents=True, exist_ok=True)
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm

        for name, fn in (("optimization_history", ovm.plot_optimization_history),
                         ("param_importances", ovm.plot_param_importances),
                         ("parallel_coordinate", ovm.plot_parallel_coordinate)):
            try:
                with known_experimental():
                    ax = fn(study)
                fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
                fig.set_size_inches(8, 5)
                fig.tight_layout()
                fig.savefig(out / f"{name}.png", dpi=100)
                plt.close(fig)
                c.log_artifact(parent, str(out / f"{name}.png"), "optuna")
            except (ValueError, RuntimeError) as e:  # e.g. importances need two finished trials
                print(f"tune: no {name} plot ({e})", file=sys.stderr)
    c.set_terminated(parent, "FINISHED")  # a later `tune` of the same study reopens nothing: it logs to it again
    return summary


def export(a, study, path: Path) -> None:
    try:
        best = study.best_trial
    except ValueError:
        raise UserError(f"--export {path}: study '{a.study}' has no finished trial yet") from None
    base = load_spec(a.spec, a.overrides)
    t = base.tune or TuneSpec()

    class Fixed:  # replays the best trial's choices through the same suggest()
        params = best.params

        def suggest_categorical(self, name, choices):
            return self.params[name]

        def suggest_float(self, name, *r, **k):
            return self.params[name]

        def suggest_int(self, name, *r, **k):
            return self.params[name]

    spec = apply(base, suggest(Fixed(), t, base))
    body = spec.model_dump(mode="json", exclude={"tune", "name"}, exclude_none=True)
    budget = best.user_attrs.get("budget", study.user_attrs.get("budget"))  # the trial's own, not this call's
    at = f"at budget {budget:g}" if budget is not None else "at an unrecorded budget"
    body["description"] = (f"Tuned by Optuna study '{a.study}' (trial {best.number}, validation error "
                           f"{best.value:.2f}% {at}) from {a.spec}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(body, sort_keys=False))
    tmp.replace(path)
    print(f"tune: wrote {path}", file=sys.stderr)


def _worker_places(a, workers: int) -> list[tuple[str, dict[str, str]]]:
    """Each worker's device and environment, as `run --jobs` places its workers: dealt over the GPUs when there are
    several, and on a CPU the threads split between the workers (K workers on all cores each would thrash)."""
    import torch

    from harness.parallel import thread_share, worker_devices
    from harness.train import pick_device

    device = pick_device(a.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    env = dict(os.environ)
    if device.type == "cpu":
        env["OMP_NUM_THREADS"] = str(thread_share(workers))
    return [(d, env) for d in worker_devices(device, workers, gpus)]


def main(a) -> int:
    import optuna

    # Optuna's INFO lines ("Using an existing study ...") repeat ours and would make a one-line error two lines
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = load_spec(a.spec, a.overrides)  # validates spec and its tune: section before anything starts
    if base.tune is None:
        print(f"tune: {a.spec} has no tune: section; using the default search space", file=sys.stderr)
    a.study = a.study or Path(a.spec).stem
    if a.trials < 0:
        raise UserError(f"--trials {a.trials}: expected the number of finished trials to reach (0 or more)")
    t0 = time.perf_counter()
    if a.trials:
        from harness.data import load_arrays

        resolve_runs(a.spec, base, a.budget)  # --budget and --data are checked before a study is created
        arrays = load_arrays(a.data, with_test=False)  # the test split is never read for tuning
        study = open_study(a, arrays.data_id)
        # --trials is a total to reach, not a number to add: a rerun of a finished study runs nothing, and
        # each worker runs at most what is left (the workers' MaxTrialsCallback stops them there together)
        left = a.trials - finished(study)
        a.sampler_seed = sampler_seed(a, study)
        if left <= 0:
            print(f"tune: study '{a.study}' already has {a.trials - left} finished trials (--trials {a.trials}); "
                  "nothing to run", file=sys.stderr)
        elif a.workers > 1:
            c = tracking.client()
            _parent_run(c, tracking.experiment_id(c, EXPERIMENT), a.study, a.spec, a.budget)
            cmd = [sys.executable, "-m", "harness", "tune", a.spec, "--trials", str(a.trials), "--study", a.study,
                   "--storage", a.storage, "--budget", str(a.budget), "--data", a.data, "--workers", "1",
                   "--heartbeat", str(a.heartbeat), "--seed", str(a.seed), "--sampler-seed", str(a.sampler_seed),
                   "--no-finish"]
            for o in a.overrides:
                cmd += ["--set", o]
            procs = [subprocess.Popen(cmd + ["--worker-index", str(i), "--device", device], env=env)
                     for i, (device, env) in enumerate(_worker_places(a, min(a.workers, left)))]
            codes = [p.wait() for p in procs]
            if any(codes):
                print(f"tune: worker exit codes {codes}", file=sys.stderr)
        else:
            run_worker(a, arrays, left, a.worker_index)
    if a.no_finish:
        return 0
    study = load_study(a)
    summary = finish(a, study)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    print("tune: " + ", ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)
    if a.export:
        export(a, study, Path(a.export))
    return 0
