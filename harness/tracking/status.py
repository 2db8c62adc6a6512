"""A run's outcome, one word: what a batch counts, what its last line says, what the exit code is read from."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum


class Status(StrEnum):
    """str-valued, so that a log line, a count and a tag read the same word."""

    FINISHED = "finished"
    SKIPPED = "skipped"  # finished before: not trained again
    DIVERGED = "diverged"
    FAILED = "failed"
    IMPORTED = "imported"  # a record logged into the store
    PRUNED = "pruned"  # a trial its study's pruner ended early


DONE = frozenset({Status.FINISHED, Status.SKIPPED})  # every run of a batch in here: exit code 0


def summary(counts: Counter) -> str:
    """'1 diverged, 2 finished': each status with its count, in the order of their names."""
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
