"""A run's end, as training hands it over: its last evaluation's metrics and its totals, typed apart."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """What train.train returns (and what a group's member ends with). The metrics are floats; how the warm-up
    ended is a word, which is why the totals are fields and not keys among the metrics."""

    metrics: dict[str, float]  # the last evaluation point: train_loss, train_error, val_*, test_*, lr, images_per_s
    iterations: int
    train_seconds: float
    stopped_early_at: int | None = None  # the evaluation point a plateau ended the run at
    warmup_ended_by: str | None = None  # "train_error" or "cap" (warmup.max_iters), where a warm-up ran
    warmup_ended_at: int | None = None

    def as_dict(self) -> dict:
        """The record's `final` (docs/results.md): the metrics, then each total that is set, in one flat object."""
        ends = {"stopped_early_at": self.stopped_early_at, "warmup_ended_by": self.warmup_ended_by,
                "warmup_ended_at": self.warmup_ended_at}
        return {**self.metrics, **{k: v for k, v in ends.items() if v is not None}, "iterations": self.iterations,
                "train_seconds": self.train_seconds}
