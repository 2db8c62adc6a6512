"""How the pages and figures show each architecture of harness.core.archs.ARCHS: its row label, its colour, whether
the paper's Table 6 gives its test error, and its panel of Fig. 6. What only a report needs lives with the reports."""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.archs import ARCHS


@dataclass(frozen=True)
class Look:
    label: str  # a table row is "<label>-<depth>"
    color: str  # its line in the error-vs-depth figure
    paper: bool = False  # the paper's Table 6 gives its test error (paper.yaml key "<name><depth>")
    fig6_panel: int | None = None  # its panel in the paper's Fig. 6 (0 left, 1 right); None: not drawn there


LOOKS: dict[str, Look] = {
    "resnet": Look("ResNet", "C0", paper=True, fig6_panel=1),
    "plain": Look("plain", "C3", fig6_panel=0),
    "torchvision_resnet34": Look("torchvision-ResNet", "C2"),
}
if set(LOOKS) != set(ARCHS):
    raise ImportError(f"harness.report.looks: looks of {sorted(LOOKS)} for architectures {sorted(ARCHS)}")


def fig6_archs() -> list[str]:
    """The architectures drawn in Fig. 6, left panel first."""
    return sorted((a for a, look in LOOKS.items() if look.fig6_panel is not None), key=lambda a: LOOKS[a].fig6_panel)
