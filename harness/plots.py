"""Figures in the look of the paper's Fig. 6: thin lines for training error, bold for test/validation."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curve(history: dict[str, list[tuple[int, float]]], title: str):
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
    fig.tight_layout()
    return fig
