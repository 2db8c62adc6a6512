"""A run's `data` tag, written in one place and read back in one way: the data's file (or source), the sizes of its
train, validation and test splits, and whether its test set is CIFAR-10's official one.

core.data writes it (`str(DataTag(...))`); the records, the reports and the why page read it with `DataTag.read`,
also from records made before this type existed, since the tag's text is the same. A leaf: no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OFFICIAL = " (official test set)"


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

    @classmethod
    def read(cls, tag: str) -> DataTag:
        """The tag as `str` wrote it; a size it lacks reads 0, so a damaged or foreign tag never stops a report."""
        sizes = {k: int(v) for k, v in re.findall(r"\b(train|val|test)=(\d+)", tag or "")}
        return cls((tag or "").split(" train=")[0], sizes.get("train", 0), sizes.get("val", 0), sizes.get("test", 0),
                   OFFICIAL in (tag or ""))
