"""reports/tuning/<study>/: a page of every study in the Optuna storage (study.md: its trials, their states and
schedules, the best, what the study ran at and how to go on with it) and Optuna's figures, written by `report --all`
(and so `make report`) only; `tune` puts the same figures on its study's parent MLflow run, so that trying a toy
study never rewrites the committed pages. Everything on the page is read from the study itself, so a committed
journal rebuilds it byte for byte."""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from harness.core.tuning_schema import Pruning
from harness.tracking import store as tracking
from harness.tracking.figures import study_figures, study_title

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"  # tune's default (cli --storage)


def optuna_storage() -> str:
    return os.environ.get("HARNESS_OPTUNA_STORAGE", DEFAULT_STORAGE)


def committed_journals(root: Path) -> list[Path]:
    """The Optuna journal files a checkout commits under results/tuning/ (`make cpu-tune` keeps its study there,
    so that a fresh clone goes on with it and draws its figures)."""
    return sorted((root / "results" / "tuning").glob("*.journal"))


def _value(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _seconds(t: FrozenTrial) -> float | None:
    """A finished trial's training time; a failed one's end is when a later call found it cut off, not a time."""
    if t.state == TrialState.FAIL or t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def _minutes(t: FrozenTrial) -> str:
    return "—" if (s := _seconds(t)) is None else f"{s / 60:.1f}"


STATE_WORDS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def rerun_of(t: FrozenTrial) -> int | None:
    """The cut-off trial whose parameters `t` runs again: `tune` enqueues it on a journal (harness.tune.study's
    requeue_cut_off, user attribute `rerun_of`); on an RDB storage, Optuna's heartbeat callback retries it and
    says so through retried_trial_number, an API it marks experimental (its warning is expected here)."""
    if "rerun_of" in t.user_attrs:
        return t.user_attrs["rerun_of"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(t)


def _state(t: FrozenTrial, reruns: dict[int, int]) -> str:
    """A trial's state in words, with the iteration it stopped at and the trial its cut-off parameters ran as."""
    last = max(t.intermediate_values, default=None)
    at = f" at iteration {last}" if last is not None and t.state != TrialState.COMPLETE else ""
    again = f"; its parameters ran again as trial {reruns[t.number]}" if t.number in reruns else ""
    rerun = f" (a rerun of trial {n})" if (n := rerun_of(t)) is not None else ""
    cut = " (cut off)" if t.state == TrialState.FAIL else ""
    return f"{STATE_WORDS.get(t.state, t.state.name.lower())}{cut}{at}{rerun}{again}"


def study_page(study, url: str, figures: list[Path]) -> str:
    """The study as a page: what its trials ran at (the study's user attributes, recorded by `tune`), each trial's
    schedule, state and validation error, the best, the command that goes on with it, and its `figures` (those
drawn: importances need two finished trials)."""
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                                             TrialState.RUNNING)}
    counts = ", ".join(f"{n} {STATE_WORDS[s]}" for s, n in states.items() if n)
    reruns = {n: t.number for t in trials if (n := rerun_of(t)) is not None}
    devices = sorted(Counter(t.user_attrs["device"] for t in trials if "device" in t.user_attrs).items())
    unrecorded = sum("device" not in t.user_attrs for t in trials)
    device = ", ".join([f"{d} ({n} trial{'s' if n > 1 else ''})" for d, n in devices]
                       + ([f"not recorded ({unrecorded} of {len(trials)} trials)"] if unrecorded else []))
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    spent = sum(s for t in done if (s := _seconds(t)) is not None)
    ends = [t.datetime_complete for t in done if t.datetime_complete]
    budget = attrs.get("budget")
    overrides = attrs.get("overrides") or []
    resume = " ".join(["python -m harness tune", str(attrs.get("spec", "SPEC")), "--study", study.study_name,
                       "--storage", url, "--budget", f"{budget:g}" if budget is not None else "BUDGET", "--data",
                       str(attrs.get("data", "DATA")), *(f"--set {o}" for o in overrides), "--trials", "N"])
    lines = [f"# {study_title(study)}", "",
             f"- Spec: `{attrs.get('spec', 'not recorded')}`" + (f" with {', '.join(overrides)}" if overrides else ""),
             "- Measured: validation error (%) on the spec's validation split at each trial's last evaluation; the "
             "test split is never read by a trial",
             f"- Budget: {budget:g}" if budget is not None else "- Budget: not recorded",
             f"- Data: {attrs.get('data_id', 'not recorded')} (read from {attrs.get('data', 'not recorded')})",
             f"- Device: {device or 'no trials'}",
             f"- Pruner: {Pruning(**attrs['pruner']).words() if 'pruner' in attrs else 'not recorded'}",
             f"- Trials: {len(trials)} ({counts or 'none'}); `--trials` counts the complete and pruned ones, and a "
             "cut-off trial runs again",
             f"- Training time: {spent / 60:.1f} min, summed over the complete and pruned trials (several may run "
             "at once)",
             f"- Date: {max(ends).date().isoformat() if ends else 'no finished trial'} (the newest finished trial's "
             "end; generated by `python -m harness report --all`)",
             f"- Storage: `{url}`; to go on to N finished trials: `{resume}`", ""]
    try:
        best = study.best_trial
        lines += [f"## Best: trial {best.number}, {best.value:.2f} % validation error", "",
                  *(f"- {k}: {_value(v)}" for k, v in best.params.items()), ""]
    except ValueError:
        lines += ["## Best: no complete trial yet", ""]
    names = list(dict.fromkeys(k for t in trials for k in t.params))
    lines += ["## Trials", "", "| trial | " + " | ".join(names) + " | state | validation error (%) | minutes |",
              "|---" * (len(names) + 4) + "|"]
    for t in trials:
        last = max(t.intermediate_values, default=None)
        err = t.value if t.value is not None else (t.intermediate_values[last] if last is not None else None)
        lines.append(f"| {t.number} | " + " | ".join(_value(t.params[k]) if k in t.params else "—" for k in names)
                     + f" | {_state(t, reruns)} | {'—' if err is None else f'{err:.2f}'} | {_minutes(t)} |")
    lines += ["", "A milestone is where a step schedule drops, as a fraction of the run; `warmup_iters` counts the "
              "paper's iterations and, like every iteration count, is scaled by the budget. A failed trial's error "
              "is its last evaluation before it was cut off.", "", *(f"![{f.stem}]({f.name})" for f in figures), ""]
    return "\n".join(lines)


def write_tuning_pages(out: Path, url: str | None = None) -> list[Path]:
    """Each study's page and figures into `out`/tuning/<study>/; a storage file that is not there is left
    uncreated and the committed pages as they are (said in one line)."""

    url = url or optuna_storage()
    path = Path(url.removeprefix("journal:")) if url.startswith("journal:") else tracking.sqlite_file(url)
    if path is not None and not path.is_file():
        print(f"report: no Optuna storage at {path}; {out}/tuning/ left as it was", file=sys.stderr)
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("journal:"):
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    else:
        storage = url
    written = []
    for name in sorted(optuna.get_all_study_names(storage)):
        study = optuna.load_study(study_name=name, storage=storage)
        drawn = study_figures(study, out / "tuning" / name)
        page = out / "tuning" / name / "study.md"
        page.write_text(study_page(study, url, drawn))
        drawn = [page, *drawn]
        print(f"report: wrote {', '.join(map(str, drawn))} (study '{name}' in {url})", file=sys.stderr)
        written += drawn
    return written
