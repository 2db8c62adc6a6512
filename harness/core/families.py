"""The learning-rate schedule families a spec may name, as plain data: which spec fields each reads, and whether it
steps on the validation loss.

A leaf (no torch, nothing else of the harness), so that the schema validates a spec without loading the training
code: harness.core.schedule computes each family's lr (one function per name here), the tuner reads which fields
to sample, and a run's MLflow params leave out the fields its family ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

# ReduceLROnPlateau's default threshold (torch.optim.lr_scheduler): a validation loss is better only when below the
# best x (1 - 1e-4); schedule.threshold's default.
PLATEAU_THRESHOLD = 1e-4


@dataclass(frozen=True)
class Family:
    name: str
    milestones: bool = False  # reads schedule.milestones (the tuner samples them)
    gamma: bool = False  # reads schedule.gamma (the tuner samples it)
    on_validation: bool = False  # steps on each evaluation point's validation loss

    @property
    def ignores(self) -> tuple[str, ...]:
        """The schedule fields this family never reads (a run's MLflow params leave them out)."""
        return ((() if self.milestones else ("milestones",)) + (() if self.gamma else ("gamma",))
                + (() if self.on_validation else ("patience", "mode", "threshold")))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("multistep", milestones=True, gamma=True),  # the paper's: lr x gamma at each milestone
    Family("cosine"),
    Family("plateau", gamma=True, on_validation=True),  # ReduceLROnPlateau on the validation loss
)}
