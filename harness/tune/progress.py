"""What `tune` shows while it runs: a bar over the study's trials (finished of --trials, best validation error so
far, the last trial's state, pruned count) and, under it, the trial's own bar; without a terminal (a log, CI, K
workers) one line per trial instead, and per evaluation point (harness.tune.command)."""

from __future__ import annotations

import sys

from optuna.trial import TrialState
from tqdm import tqdm


class TrialsProgress:
    """An Optuna callback: called after each trial of this worker, it reads the study for the rest (trials of
    other workers count too)."""

    def __init__(self, study: str, trials: int, done: int, bar: bool):
        self.name, self.trials, self.bar = study, trials, None
        if bar:
            self.bar = tqdm(total=trials, initial=done, desc=f"study {study}", unit="trial", dynamic_ncols=True,
                            file=sys.stderr)

    def __enter__(self) -> TrialsProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, study, trial) -> None:
        states = [t.state for t in study.get_trials(deepcopy=False)]
        done = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
        pruned = states.count(TrialState.PRUNED)
        best = min((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
                   key=lambda t: t.value, default=None)
        best_text = f"{best.value:.2f}% (trial {best.number})" if best else "none yet"
        state = trial.state.name.lower()
        if self.bar is not None:
            self.bar.n = min(done, self.trials)
            self.bar.set_postfix(best=best_text, last=f"t{trial.number} {state}", pruned=pruned)
            return
        value = f" val_error {trial.value:.2f}%" if trial.value is not None else ""
        print(f"trial {trial.number}: {state}{value}; {done}/{self.trials} finished, {pruned} pruned, best "
              f"val_error {best_text}", file=sys.stderr, flush=True)
