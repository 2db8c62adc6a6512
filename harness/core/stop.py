"""Stopping a command by signal: Ctrl-C (SIGINT) and SIGTERM, what a scheduler (Slurm, Kubernetes) sends before it
kills, end a run alike: KILLED in MLflow, its last checkpoint kept, resumed by the next call. An evaluation point
logs its metrics and then writes its checkpoint; a stop between the two would make the resumed run log that step a
second time, so a signal arriving there is raised once both are written.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, what a scheduler (Slurm, Kubernetes) sends before it kills: the run ends as Ctrl-C ends it (KILLED,
    its last checkpoint kept, resumed by the next call); the command exits 143 (128 + SIGTERM)."""


_held: dict[str, object] = {"depth": 0, "pending": None}


def _on_signal(signum, frame) -> None:
    if _held["depth"]:
        _held["pending"] = signum  # raised once the evaluation point's metrics and checkpoint are both written
        return
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


@contextmanager
def stop_signals():
    """SIGINT and SIGTERM as KeyboardInterrupt (Terminated for SIGTERM) around a command, in the main thread (a
    Ray worker's task keeps Ray's own handling); `held()` defers them over an evaluation point."""
    try:
        before = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@contextmanager
def held():
    """An evaluation point's metrics are logged, then its checkpoint is written: a stop between the two would let
    the resumed run log that step again, so a signal that arrives in between is raised after both."""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        signum, _held["pending"] = _held["pending"], None
        if signum is not None and not _held["depth"]:
            _on_signal(signum, None)
