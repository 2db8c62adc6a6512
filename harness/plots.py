"""Figures in the look of the paper's Fig. 6: thin lines for training error, bold for test/validation.

Drawing only: each function takes the numbers, writes one PNG and closes its figure, so that a long batch or a
report of many pages holds no figure open. Where the numbers come from (a run's history, a campaign's runs) is
the caller's business.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

History = list[tuple[int, float]]  # (iteration, value)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def learning_curve(history: dict[str, History], title: str, path: Path) -> None:
    """history: metric name -> [(iteration, value)]; draws train (thin), val and test (bold) error."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    styles = {"train_error": dict(lw=0.8, ls="--", label="train error"),
              "val_error": dict(lw=2.0, label="validation error"),
              "test_error": dict(lw=2.0, alpha=0.6, label="test error (curve only, never selects)")}
    for key, style in styles.items():
        pts = history.get(key) or []
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], **style)
    ax.set_xlabel("iteration")
    ax.set_ylabel("error (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    _save(fig, path)
