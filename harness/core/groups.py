"""The experiment groups (one folder of specs and one MLflow experiment each) and the paper's figures they face.

One registry: `table` trains the groups that are `trained`, `report` writes each group's `pages` in this order,
the index links them in it, and MLflow shows each group's `note` as its experiment's description.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.errors import UserError

PAPER_FILE = Path("experiments/paper.yaml")  # relative: the working directory's copy wins (a user may extend it)
SEED_LOG_FILE = Path("experiments/seed_log.yaml")  # the failed reproduction's printed figures, beside the paper's
FIGURE_FILES = (PAPER_FILE.name, SEED_LOG_FILE.name)  # figures to compare with, not specs: a folder walk skips them
CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Group:
    name: str
    note: str  # the MLflow experiment's description
    pages: tuple[str, ...] = ()  # the files `report` writes for it, its markdown page first
    trained: bool = True  # `table` trains its folder by default

    @property
    def folder(self) -> Path:
        return Path("experiments") / self.name


GROUPS: tuple[Group, ...] = (
    Group("table6", "He et al. 2015 Table 6 reproduced: the paper's CIFAR-10 ResNets and plain nets with its recipe "
                    "(SGD 0.1, momentum 0.9, wd 1e-4, /10 at 32k and 48k, 64k iterations, batch 128).",
          ("table6.md", "table6.csv", "error_vs_depth.png", "curves_table6.png")),
    Group("ablations", "One change each against the table6 recipe (optimizer, shortcut, augmentation, dtype, split, "
                       "schedule), to see which part of the recipe the result depends on.", ("ablations.md",)),
    Group("ladder", "From the seed log's setup to the paper's recipe one change per rung: each rung's run says what "
                    "it changes, so the gap to Table 6 is split over the changes.", ("ladder.md", "ladder.png")),
    Group("tuned", "The best schedule of a tuning study exported as a spec and trained once like table6, the only "
                   "time it meets the test set.", ("tuned.md",)),
    Group("seedlog", "The seed log's printed runs as specs (its Adam run and its two SGD runs on its ResNet-34), "
                     "and their variants in the why-campaign (experiments/campaigns/cpu-why.yaml).", trained=False),
    Group("tuning", "Optuna studies over the learning-rate schedule, scored on the validation split only (the test "
                    "split is never read): one parent run per study, its trials as child runs.", trained=False),
)
BY_NAME = {g.name: g for g in GROUPS}
REPORTED = tuple(g for g in GROUPS if g.pages)  # in page order


def note_of(name: str) -> str:
    g = BY_NAME.get(name)
    return g.note if g else f"Runs of the specs in experiments/{name}."


def paper_file() -> Path | None:
    """The paper's figures: the working directory's copy if there is one, else this checkout's."""
    return next((p for p in (PAPER_FILE, CHECKOUT / PAPER_FILE) if p.is_file()), None)


def load_paper() -> dict:
    path = paper_file()
    if path is None:
        raise UserError(f"{PAPER_FILE}: not found (expected the paper's Table 6 figures, as in the repository's "
                        f"{PAPER_FILE})")
    return yaml.safe_load(path.read_text())
