"""What a spec may say about tuning: the search space `harness tune` samples (`tune:`) and where a tuned spec's
schedule came from (`tuned:`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from harness.core.families import FAMILIES
from harness.core.strict import Strict

FAMILY_NAMES = tuple(FAMILIES)  # what schedule.name and tune.families accept

TuneRange = tuple[float, float]


class TuneSpec(Strict):
    """Search space for `harness tune`; ranges are validated here like the rest of the spec."""

    lr: TuneRange | None = (0.01, 0.5)
    milestone_fractions: list[TuneRange] | None = [(0.3, 0.7), (0.6, 0.95)]
    gamma: TuneRange | None = (0.05, 0.5)
    warmup_iters: tuple[int, int] | None = None
    families: list[Literal[FAMILY_NAMES]] = ["multistep"]
    pruner: Literal["median", "hyperband", "none"] = "median"

    @field_validator("lr", "gamma")
    @classmethod
    def _positive_range(cls, v):
        if v is not None and not 0 < v[0] < v[1]:
            raise ValueError(f"expected [low, high] with 0 < low < high, got {list(v)}")
        return v

    @field_validator("milestone_fractions")
    @classmethod
    def _fraction_ranges(cls, v):
        for r in v or []:
            if not 0 < r[0] < r[1] < 1:
                raise ValueError(f"expected ranges [low, high] with 0 < low < high < 1, got {list(r)}")
        return v

    @field_validator("warmup_iters")
    @classmethod
    def _int_range(cls, v):
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError(f"expected [low, high] with 0 <= low < high, got {list(v)}")
        return v


class TunedFrom(Strict):
    """Where a tuned spec's schedule came from: the study, the data and budget its trials ran at, how many trials
    it had, and the best trial's validation error. A schedule tuned in 64 iterations on a 4k-image subset is no
    schedule for 64k iterations on all of CIFAR-10: `table` trains a tuned spec only at its study's budget."""

    study: str
    trial: int = Field(ge=0)
    val_error: float  # the best trial's validation error (%), the study's objective
    budget: float = Field(gt=0)
    data: str  # the data id the trials trained on
    trials: int = Field(ge=1)  # trials the study had when the spec was exported
    # The spec file the study tuned, e.g. experiments/tuning/cpu-resnet20.yaml: trained as it is (the paper's
    # schedule) at the same budget, it is the tuned spec's twin on tuned.md. Read as group/name, never opened.
    source: str | None = None
