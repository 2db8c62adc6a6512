"""The learning rate of every iteration, and the decisions that move it, as one object.

The training loop asks `lr_at(iteration)` before each step and feeds back the numbers the schedule decides on:
the training error of each WARMUP_CHECK_EVERY-iteration window during the paper's ResNet-110 warm-up, and the
validation loss at each evaluation point (plateau drops, early stopping). The object holds host numbers only, so
it never makes the loop wait on the device, and its state_dict is all a checkpoint needs to resume it to the bit.
The families and their traits are harness.core.families.FAMILIES (plain data the schema reads without this module);
here each family's lr is one function decorated with `lr_of`, and a family without one fails the import.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from harness.core.families import FAMILIES
from harness.core.schema import ScheduleSpec

# Iterations per training-error window of the ResNet-110 warm-up: the host reads the device once per window.
WARMUP_CHECK_EVERY = 20

# ReduceLROnPlateau's default: a drop smaller than 1e-8 is not made.
PLATEAU_EPS = 1e-8


def eval_every(total_iters: int, eval_points: int) -> int:
    """Iterations between evaluation points; the training loop and the tuner's pruner both count in it, so a
    pruner's warm-up and resources line up with the points at which a trial reports."""
    return max(1, -(-total_iters // eval_points))


LR: dict[str, Callable[[Schedule, int], float]] = {}  # a family's lr at iteration `it`, by FAMILIES name


def lr_of(lr: Callable[[Schedule, int], float]) -> Callable[[Schedule, int], float]:
    """`@lr_of` over `name(sched: Schedule, it: int) -> float`: the lr of the family FAMILIES names `name`."""
    if lr.__name__ not in FAMILIES:
        raise ValueError(f"{lr.__name__}: no such schedule family in harness.core.families.FAMILIES")
    LR[lr.__name__] = lr
    return lr


class Schedule:
    """A family of FAMILIES behind the paper's ResNet-110 warm-up and a linear `warmup_iters` ramp.

    The ResNet-110 warm-up (lr `warmup.lr` until a window's training error drops below `warmup.until_train_error`,
    at most `warmup.max_iters` iterations) replaces the family's lr while it lasts. The linear ramp multiplies
    every family's lr over the first `warmup_iters` iterations, by iteration number, so it is one ramp for all.
    Plateau is ReduceLROnPlateau on validation loss with its patience counted in evaluation points; it does not
    step at evaluation points inside the ResNet-110 warm-up. Early stopping reads the same validation losses.
    """

    STATE = ("warmup_done", "plateau_lr", "plateau_best", "plateau_bad", "best_val_loss", "best_val_iter",
             "warmup_ended_by", "warmup_ended_at")

    def __init__(self, s: ScheduleSpec, base_lr: float, every: int):
        self.family = FAMILIES[s.name]
        if self.family.on_validation and s.gamma >= 1.0:
            raise ValueError(f"schedule.gamma: a {s.name} schedule needs a factor below 1, got {s.gamma}")
        self.s, self.base_lr = s, base_lr
        self.patience_evals = math.ceil(s.patience / every)
        self.warmup_done = False
        self.plateau_lr = base_lr
        self.plateau_best = math.inf if s.mode == "min" else -math.inf
        self.plateau_bad = 0
        self.best_val_loss = math.inf
        self.best_val_iter = 0
        self.warmup_ended_by: str | None = None  # "train_error" or "cap" (warmup.max_iters), once it has ended
        self.warmup_ended_at: int | None = None

    def warming(self, it: int) -> bool:
        """Whether iteration `it` (0-based) runs at the ResNet-110 warm-up lr."""
        w = self.s.warmup
        return w is not None and not self.warmup_done and it < w.max_iters

    def lr_at(self, it: int) -> float:
        """The lr of iteration `it`; a function of the iteration and this object's state only, so resume cannot
        drift."""
        s = self.s
        if self.warming(it):
            return s.warmup.lr
        lr = LR[self.family.name](self, it)
        return lr * min(1.0, (it + 1) / s.warmup_iters) if s.warmup_iters else lr

    def observe_train_error(self, error: float) -> None:
        """The training error (%) of the last WARMUP_CHECK_EVERY iterations of the warm-up: below the threshold,
        the warm-up ends."""
        if error < self.s.warmup.until_train_error:
            self.warmup_done = True

    def warmup_ended(self, it: int) -> bool:
        """After iteration `it` (1-based count) ran at the warm-up lr: whether the warm-up ends there, and by what,
        the training error or the safety cap. The cap is a guard, not the paper's rule, so ending by it is
        recorded for the run to report."""
        if self.warming(it):
            return False
        self.warmup_ended_by, self.warmup_ended_at = ("train_error" if self.warmup_done else "cap"), it
        return True

    def observe_eval(self, it: int, val_loss: float, warming: bool) -> bool:
        """The validation loss at evaluation point `it`; `warming` says whether the iteration before it ran at the
        warm-up lr. Returns whether early stopping ends the run here."""
        if self.family.on_validation and not warming:
            self.plateau_step(val_loss)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_val_iter = val_loss, it
            return False
        patience = self.s.early_stopping_patience
        return bool(patience) and it - self.best_val_iter >= patience

    def plateau_step(self, val_loss: float) -> None:
        """ReduceLROnPlateau.step with threshold_mode "rel" (schedule.threshold), no cooldown and min_lr 0, on the
        plateau lr alone."""
        current, threshold = float(val_loss), self.s.threshold
        if self.s.mode == "min":
            better = current < self.plateau_best * (1.0 - threshold)
        else:
            better = current > self.plateau_best * (threshold + 1.0)
        if better:
            self.plateau_best, self.plateau_bad = current, 0
        else:
            self.plateau_bad += 1
        if self.plateau_bad > self.patience_evals:
            new_lr = max(self.plateau_lr * self.s.gamma, 0.0)
            if self.plateau_lr - new_lr > PLATEAU_EPS:
                self.plateau_lr = new_lr
            self.plateau_bad = 0

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state: dict) -> None:
        for k in self.STATE:  # a checkpoint may lack warmup_ended_*: they read None then
            setattr(self, k, state[k] if k in state or not k.startswith("warmup_ended") else None)


@lr_of
def multistep(sched: Schedule, it: int) -> float:
    """The paper's: the lr times gamma at each milestone passed."""
    return sched.base_lr * sched.s.gamma ** sum(it >= m for m in sched.s.milestones)


@lr_of
def cosine(sched: Schedule, it: int) -> float:
    return sched.base_lr * 0.5 * (1 + math.cos(math.pi * it / sched.s.total_iters))


@lr_of
def plateau(sched: Schedule, it: int) -> float:
    """ReduceLROnPlateau on the validation loss: the lr its last drop left."""
    return sched.plateau_lr


if set(LR) != set(FAMILIES):  # a family with no lr, or an lr of no family, is a bug of this module
    raise ImportError(f"harness.core.schedule: lr functions {sorted(LR)} for families {sorted(FAMILIES)}")
