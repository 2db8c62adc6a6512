"""The Optuna side of `harness tune`: storages, the study and what it records, the search space, the pruner, and
the best trial written back as a spec.

Storage is an Optuna RDB URL (SQLite by default; PostgreSQL for many machines) with heartbeats, so a worker
killed mid-trial leaves a trial that the next worker marks FAIL (fail_stale_trials) and runs again with the same
parameters (Optuna's RetryHeartbeatStaleTrialCallback), or `journal:PATH` (JournalStorage on a file: one small
append-only file a checkout can commit, so a study goes on from a fresh clone), whose cut-off trials `tune` fails
and re-runs itself when it starts (requeue_cut_off): a cut-off trial is re-run, never lost.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import optuna
import yaml
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from harness.core.families import FAMILIES
from harness.core.spec import Spec, TuneSpec, with_overrides
from harness.core.tuning_schema import Pruning
from harness.errors import UserError
from harness.tracking import store as tracking


@contextmanager
def known_experimental():
    """Optuna warns (ExperimentalWarning) on every use of an API it marks experimental. We use RDBStorage's
    heartbeat_interval and RetryHeartbeatStaleTrialCallback (how a killed worker's trial gets failed and run again)
    and Study.set_metric_names knowingly (the plots silence their own in harness.tracking.figures); their warnings
    are silenced around those calls only, so an experimental API we did not choose still warns."""

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        yield


def storage_file(url: str) -> Path | None:
    """The file of a `journal:PATH` or `sqlite:///PATH` storage (opening it creates it), else None."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    return tracking.sqlite_file(url)


def open_storage(url: str, heartbeat: int = 30):
    path = storage_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:"):
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    with known_experimental():
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))


def requeue_cut_off(study) -> list[int]:
    """A journal file has no heartbeat: a trial whose process was killed stays RUNNING there. Called when a `tune`
    starts, before its workers, every RUNNING trial is such a one (a journal is one machine's file, worked on by
    one `tune` at a time): each is marked FAIL and its parameters are queued, so the next trial runs them again.
    Returns the numbers of the trials re-queued."""
    again = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # FrozenTrial keeps its storage id private; Optuna's own fail_stale_trials reads it the same way
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
        study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number}, skip_if_exists=False)
        again.append(t.number)
    return again


def load_study(url: str, heartbeat: int, name: str):
    """The existing study named by --study, for finish and --export. A typo there must not end in Optuna's
    `KeyError: 'Record does not exist.'` traceback: say which studies the storage holds instead, and create
    nothing (opening a SQLite or journal file that is not there would create an empty one)."""

    path = storage_file(url)
    names = []
    if path is None or path.exists():
        storage = open_storage(url, heartbeat)
        names = sorted(optuna.get_all_study_names(storage))
    if name not in names:
        held = f"it holds {', '.join(names)}" if names else "it holds no studies"
        raise UserError(f"--study '{name}': no such study in --storage {url} ({held}); check the name, "
                        "or run with --trials N to create it")
    return optuna.load_study(study_name=name, storage=storage)


def open_study(name: str, url: str, heartbeat: int, ran_at: dict, pruning: Pruning):
    """Create the study and record on it what its trials run at (`ran_at`: budget, data_id, data, spec,
    overrides) and its pruner, or check that a resumed one matches: validation errors at different budgets or on
    different data do not compare, and a study mixing them would crown the longest-trained trial rather than the
    best schedule; a pruner compares trials at its rungs, and rungs at other iterations do not compare. A study
    that lacks them takes them from the call that resumes it."""

    study = optuna.create_study(study_name=name, storage=open_storage(url, heartbeat), direction="minimize",
                                load_if_exists=True)
    if "budget" not in study.user_attrs:
        for key, value in ran_at.items():
            study.set_user_attr(key, value)
    if study.metric_names is None:  # the objective's name in optuna-dashboard and trials_dataframe
        with known_experimental():
            study.set_metric_names(["val_error"])
    ran = study.user_attrs  # read back: of two processes creating the study at once, the first to record wins
    budget, data_id = ran_at["budget"], ran_at["data_id"]
    if ran["budget"] != budget:
        raise UserError(f"--budget {budget:g}: study '{name}' was run at budget {ran['budget']:g}, and trials at "
                        f"two budgets do not compare; resume it with --budget {ran['budget']:g}, or name a new "
                        "study with --study")
    if ran["data_id"] != data_id:
        raise UserError(f"--data {ran_at['data']}: study '{name}' was run on {ran['data']} (data id "
                        f"{ran['data_id']}), not on this data (data id {data_id}); resume it with that data, or "
                        "name a new study with --study")
    if "pruner" not in ran:  # a study from before `tune` recorded its pruner takes this call's, as it ran
        study.set_user_attr("pruner", asdict(pruning))
    elif ran["pruner"] != asdict(pruning):
        raise UserError(f"study '{name}' was pruned by {Pruning(**ran['pruner']).words()}; this call's spec and "
                        f"budget give {pruning.words()}: trials pruned at other iterations do not compare; resume it "
                        "with the spec it ran, or name a new study with --study")
    return study


def finished(study) -> int:
    """Trials that count towards --trials: complete or pruned (a failed trial is not counted; another is run)."""

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def sampler_seed(study, seed: int) -> int:
    """--seed + the number of trials already in the study: the seed of worker 0 of this call (worker i adds i).
    TPE draws its first trials at random from its seed alone, so a study resumed with the bare --seed drew
    trial 0's point again; the trial count moves each resume to new points, and the same commands run again on
    a fresh study still draw the same ones. The parent reads the count once and hands the seed to its
    workers (command.Worker), so it does not depend on which worker started first."""
    return seed + len(study.get_trials(deepcopy=False))


def make_pruner(p: Pruning):
    """Pruning in the trial's own evaluation points, the steps it reports at."""

    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.first, max_resource=p.total,
                                              reduction_factor=p.reduction_factor)
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.first)
    return optuna.pruners.NopPruner()


def suggest(trial, t: TuneSpec, base: Spec) -> dict:
    """Sample a schedule; returns spec overrides with milestones in paper iterations (scaled by budget later)."""
    p: dict = {}
    family = trial.suggest_categorical("family", t.families) if len(t.families) > 1 else t.families[0]
    p["schedule.name"] = family
    if t.lr:
        p["optimizer.lr"] = trial.suggest_float("lr", *t.lr, log=True)
    total = base.schedule.total_iters
    traits = FAMILIES[family]
    if traits.milestones and t.milestone_fractions:
        fr = [trial.suggest_float(f"milestone_{i}", *r) for i, r in enumerate(t.milestone_fractions)]
        p["schedule.milestones"] = sorted({max(1, min(total - 1, round(f * total))) for f in fr})
    elif not traits.milestones:
        p["schedule.milestones"] = []
    if t.gamma and traits.gamma:
        p["schedule.gamma"] = trial.suggest_float("gamma", *t.gamma, log=True)
    if t.warmup_iters:
        p["schedule.warmup_iters"] = trial.suggest_int("warmup_iters", *t.warmup_iters)
    return p


class _Replay:
    """A finished trial's choices, answered through the same suggest() that sampled them."""

    def __init__(self, params: dict):
        self.params = params

    def suggest_categorical(self, name, choices):
        return self.params[name]

    def suggest_float(self, name, *r, **k):
        return self.params[name]

    def suggest_int(self, name, *r, **k):
        return self.params[name]


def export(study, base: Spec, spec_path: str, path: Path) -> None:
    """Write the best trial as an ordinary spec (no tune: section), labelled with the budget its trial ran at."""
    try:
        best = study.best_trial
    except ValueError:
        raise UserError(f"--export {path}: study '{study.study_name}' has no finished trial yet") from None
    t = base.tune or TuneSpec()
    spec = with_overrides(base, suggest(_Replay(best.params), t, base))
    body = spec.model_dump(mode="json", exclude={"tune", "name"}, exclude_none=True)
    budget = best.user_attrs.get("budget", study.user_attrs.get("budget"))  # the trial's own, not this call's
    data = study.user_attrs.get("data_id", "unrecorded data")
    trials = finished(study)  # as --trials counts them: a failed trial is a cut-off one, run again
    at = f"at budget {budget:g}" if budget is not None else "at an unrecorded budget"
    body["description"] = (f"Tuned by Optuna study '{study.study_name}' (trial {best.number} of {trials}, validation "
                           f"error {best.value:.2f}% {at} on {data}) from {spec_path}: its schedule is the best of "
                           "trials at that budget, and `table` trains it at that budget only; tuned.md sets it "
                           f"against {spec_path} as it is (the paper's schedule) at the same budget")
    if budget is not None:
        body["tuned"] = {"study": study.study_name, "trial": best.number, "val_error": round(best.value, 4),
                         "budget": budget, "data": data, "trials": trials, "source": spec_path}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(body, sort_keys=False))
    tmp.replace(path)
    print(f"tune: wrote {path}", file=sys.stderr)
