"""What a spec may say about tuning: the search space `harness tune` samples (`tune:`) and where a tuned spec's
schedule came from (`tuned:`).
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Pruning:
    """The study's pruner in the iterations a trial reports at (harness.core.schedule.eval_every), worked out once
    per call from the spec and budget. `tune` records it on the study (user attribute `pruner`), so the study's
    page says where a trial may stop, and refuses to resume a study with other settings."""

    name: str  # the spec's tune.pruner: hyperband, median or none
    first: int  # the earliest iteration a trial may stop at: hyperband's min_resource, median's n_warmup_steps
    total: int  # a trial's iterations: hyperband's max_resource
    reduction_factor: int = 3  # hyperband: a third of a rung's trials go on to the next rung
    startup_trials: int = 3  # median: trials that finish before it prunes any

    def stops(self) -> list[int]:
        """Hyperband's rungs: the iterations where a trial may stop, whichever bracket it falls in."""
        out, at = [], self.first
        while at < self.total:
            out.append(at)
            at *= self.reduction_factor
        return out

    def words(self) -> str:
        if self.name == "hyperband":
            return (f"Optuna's HyperbandPruner (min_resource {self.first}, max_resource {self.total}, reduction "
                    f"factor {self.reduction_factor}): a trial may stop at iteration {_either(self.stops())}, the "
                    "rungs of the bracket it falls in")
        if self.name == "median":
            return (f"Optuna's MedianPruner (n_warmup_steps {self.first}, n_startup_trials {self.startup_trials}): "
                    f"a trial worse than the median of earlier trials at the same iteration stops, from iteration "
                    f"{self.first} on")
        return "no pruner: every trial runs its full length"


def _either(steps: list[int]) -> str:
    words = [str(s) for s in steps]
    return " or ".join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else "".join(words)


def pruning(t: TuneSpec, total_iters: int, eval_every: int) -> Pruning:
    return Pruning(t.pruner, eval_every, total_iters)


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
