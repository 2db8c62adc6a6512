"""The architectures a spec may name, as plain data: what the schema needs to resolve a `model:` section.

A leaf (no torch, nothing else of the harness), so that validating a spec loads no training code:
harness.core.models builds each architecture (one builder per name here, checked at its import), and
harness.report.looks says how the pages and figures show it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str
    depth: int | None = None  # a fixed depth; None: the CIFAR rule 6n+2, 32 by default
    shortcut: str = "A"  # the default shortcut option
    stems: tuple[str, ...] = ("cifar",)  # the stems it accepts, its default first
    init: str = "he"  # the init its builder leaves (harness.core.models.INITS), model.init's default


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("resnet"),  # the paper's CIFAR ResNet, 6n+2 layers
    Arch("plain"),  # the same net without its shortcuts (the paper's plain baselines)
    Arch("torchvision_resnet34", depth=34, shortcut="B", stems=("imagenet", "cifar"), init="torchvision"),
)}
