"""A run's `data` tag, written in one place and read back in one way: the data's file (or source), the sizes of its
train, validation and test splits, and whether its test set is CIFAR-10's official one; and the one rule for what
its numbers may be called (`cifar10_test_error`).

core.data writes it (`str(DataTag(...))`); the records, the reports and the why page read it with `DataTag.read`,
also from records made before this type existed, since the tag's text is the same. A leaf: no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OFFICIAL = " (official test set)"
FULL_TRAIN = 50000  # CIFAR-10's training images: the paper trains on all of them


@dataclass(frozen=True)
class DataTag:
    source: str  # the .npz file's name, or torchvision-cifar10
    train: int
    val: int
    test: int
    official: bool = False  # the test set is CIFAR-10's official 10,000 images (by their bytes)

    def __str__(self) -> str:
        return f"{self.source} train={self.train} val={self.val} test={self.test}{OFFICIAL if self.official else ''}"

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def full_training_data(self) -> bool:
        """Trained on all 50,000 training images of the file whose test split is the official one (CIFAR-10): none
        held out for validation."""
        return self.official and self.train == FULL_TRAIN and self.val == 0

    def cifar10_test_error(self, budget: float) -> bool:
        """What may be called CIFAR-10 test error: all 50,000 training images trained, the official 10,000 tested,
        at the paper's budget. A run on the full file that holds 5,000 out is test error on the official test set
        after training on 45,000 images, which is not the paper's Table 6 setting."""
        return self.full_training_data and self.test == 10000 and budget == 1.0

    @classmethod
    def read(cls, tag: str) -> DataTag:
        """The tag as `str` wrote it; a size it lacks reads 0, so a damaged or foreign tag never stops a report."""
        sizes = {k: int(v) for k, v in re.findall(r"\b(train|val|test)=(\d+)", tag or "")}
        return cls((tag or "").split(" train=")[0], sizes.get("train", 0), sizes.get("val", 0), sizes.get("test", 0),
                   OFFICIAL in (tag or ""))
