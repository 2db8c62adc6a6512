"""Figures in the look of the paper's Fig. 6: thin lines for training error, bold for test/validation.

Drawing only: each function takes the numbers (or an Optuna study), writes PNGs and closes its figures, so that a
long batch or a report of many pages holds no figure open. Where the numbers come from (a run's history, a campaign's
runs) is the caller's business.
"""

from __future__ import annotations

import math
import sys
import textwrap
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from optuna.exceptions import ExperimentalWarning
from optuna.importance import FanovaImportanceEvaluator
from optuna.visualization import matplotlib as ovm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

History = list[tuple[int, float]]  # (iteration, value)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version stamp: the same numbers give the same bytes
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
    ax.set_title(textwrap.fill(title, 70), fontsize=9)  # a long run name and data tag wrap inside the figure
    _save(fig, path)


def error_vs_depth(measured: dict[str, tuple[str, Sequence, Sequence, Sequence]],
                   paper: tuple[Sequence, Sequence, Sequence], ylabel: str, path: Path) -> None:
    """measured: an architecture's label -> (colour, depths, mean errors, stds); paper: (depths, means, stds) of the
    paper's ResNets."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, (color, depths, means, stds) in measured.items():
        ax.errorbar(depths, means, yerr=stds, marker="o", color=color, capsize=3, label=f"{label} (measured)")
    depths, means, stds = paper
    ax.errorbar(depths, means, yerr=stds, fmt="k*--", capsize=3,
                label="ResNet (paper: full data, 64k it; 110: mean ± std of its runs)")
    ax.set_xlabel("depth")
    ax.set_ylabel(ylabel)
    ax.set_title("Error vs depth", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


@dataclass(frozen=True)
class Curve:
    """One line pair of Fig. 6: train and test error against iteration, each the mean over the seeds a label
    names, with the test error's std over seeds at each point (empty for one seed: no band is drawn)."""
    label: str
    train: History
    test: History
    test_std: tuple[float, ...] = ()


def fig6_curves(panels: dict[str, list[Curve]], ylabel: str, path: Path, title: str = "") -> None:
    """The paper's Fig. 6: one panel per arch, left to right in the order of `panels` (its label -> its curves),
    one colour per depth; thin dashed for train, bold for test, a shaded band of ± one std over seeds around the
    test line where there are seeds to have one."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6 if title else 4), dpi=100, sharey=True,
                             squeeze=False)
    for ax, (label, curves) in zip(axes[0], panels.items(), strict=True):
        for i, c in enumerate(curves):
            ax.plot([s for s, _ in c.train], [v for _, v in c.train], lw=0.8, ls="--", color=f"C{i}")
            ax.plot([s for s, _ in c.test], [v for _, v in c.test], lw=2.0, color=f"C{i}", label=c.label)
            if c.test_std:
                ax.fill_between([s for s, _ in c.test], [v - d for (_, v), d in zip(c.test, c.test_std, strict=True)],
                                [v + d for (_, v), d in zip(c.test, c.test_std, strict=True)], color=f"C{i}",
                                alpha=0.2, lw=0)
        ax.set_title(f"{label} (thin dashed: train, bold: test)", fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    if title:  # a campaign's label is long: wrapped, so that no word leaves the figure
        fig.suptitle(textwrap.fill(title, 150), fontsize=9)
    _save(fig, path)


def ladder_bars(names: list[str], means: list[float], stds: list[float], ylabel: str, path: Path) -> None:
    """One bar per rung (mean ± std), each rung's Δ against the one before it written above its bar."""
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="C0")
    for i in range(1, len(names)):
        if not (math.isnan(means[i]) or math.isnan(means[i - 1])):
            ax.annotate(f"{means[i] - means[i - 1]:+.1f}", (i, means[i]), ha="center", va="bottom",
                        xytext=(0, 4), textcoords="offset points", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title("Why the gap: one factor per rung (Δ vs previous rung)", fontsize=9)
    _save(fig, path)


STUDY_FIGURES = ("optimization_history", "param_importances", "parallel_coordinate")


EpochCurve = tuple[str, list[tuple[float, float]], list[tuple[float, float]]]  # name, train, test: (epoch, error %)


def why_figure(curves: list[EpochCurve], log_points: list[tuple[str, list[tuple[float, float, float]]]],
               costs: list[tuple[str, float, float]], cost_label: str, path: Path) -> None:
    """The why page's figure. Left: training (thin, dashed) and test (bold) error by epoch of the runs beside the
    log's printed points (epoch, train error, test error; open markers for train, filled for test), on a log-scaled
    epoch axis since the log's runs go on to thousands of epochs. Right: each measured cost in test-error points
    (bar) with the seed std of its runs (whisker; none for a single run)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=100, gridspec_kw={"width_ratios": [1.2, 1]})
    colors: dict[str, str] = {}
    for name, train, test in curves:  # a name's seeds share its colour and its one legend entry
        labelled = name in colors
        color = colors.setdefault(name, f"C{len(colors)}")
        left.plot([e for e, _ in train], [v for _, v in train], ls="--", lw=0.8, color=color)
        left.plot([e for e, _ in test], [v for _, v in test], lw=2.0, color=color, label=None if labelled else name)
    for i, (what, pts) in enumerate(log_points):
        marker = "osd^v"[i % 5]
        left.plot([e for e, _, _ in pts], [t for _, _, t in pts], ls="none", marker=marker, color="k", ms=6,
                  label="the log: " + textwrap.shorten(what, 60))
        left.plot([e for e, tr, _ in pts if not math.isnan(tr)], [tr for _, tr, _ in pts if not math.isnan(tr)],
                  ls="none", marker=marker, mfc="none", color="k", ms=6)
    left.set_xscale("log")
    left.set_xlabel("epoch (log scale)")
    left.set_ylabel("error (%): train dashed / open, test bold / filled")
    left.set_ylim(0, 100)
    left.grid(alpha=0.3)
    left.legend(fontsize=6.5, loc="upper right")
    left.set_title("our runs beside the log's printed points", fontsize=9)
    costs = sorted(costs, key=lambda c: c[1])
    y = range(len(costs))
    right.barh(list(y), [d for _, d, _ in costs], xerr=[s for _, _, s in costs], color="C3", alpha=0.7, capsize=3)
    right.set_yticks(list(y), [textwrap.shorten(n, 40) for n, _, _ in costs], fontsize=7)
    right.axvline(0, color="k", lw=0.8)
    right.set_xlabel(textwrap.fill(f"test-error points, {cost_label}", 70))  # a long label wraps, never clips
    right.grid(axis="x", alpha=0.3)
    right.set_title("what each change costs (whisker: its runs' seed std)", fontsize=9)
    _save(fig, path)


@contextmanager
def known_plot_warnings():
    """Optuna's plots warn where a small study cannot fill them: Optuna 5's PED-ANOVA importance (its default
    evaluator) with a parameter regime of fewer than 2 trials or with too few trials to tell its quantiles apart,
    matplotlib expanding equal y limits (a history of one value), and the plots' own ExperimentalWarning (used
    knowingly). The plots are still drawn; these warnings, matched by message or category, are silenced around
    the plots only."""

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        warnings.filterwarnings("ignore", r"Some regimes for parameter .* have less than \d+ trials", UserWarning)
        warnings.filterwarnings("ignore", r"Target and region quantiles select the same set of trials", UserWarning)
        warnings.filterwarnings("ignore", r"Attempting to set identical low and high ylims", UserWarning)
        yield


def study_title(study) -> str:
    """What a study's figures are of: its name, its trials' data and budget (the study's user attributes), and its
    finished trials; a figure without them reads as a result at the paper's budget."""
    attrs = study.user_attrs
    budget = f"budget {attrs['budget']:g}" if "budget" in attrs else "an unrecorded budget"
    finished = [t for t in study.trials if t.state.is_finished()]
    return (f"Optuna study '{study.study_name}': {len(finished)} trials at {budget} on "
            f"{attrs.get('data_id', 'unrecorded data')}, validation error (the test split never selects)")


def study_figures(study, out: Path) -> list[Path]:
    """Optuna's optimization history, parameter importances and parallel coordinates as PNGs in `out`; returns
    those drawn. One that cannot be drawn yet (importances need two finished trials) is said and skipped."""

    out.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name in STUDY_FIGURES:
        try:
            with known_plot_warnings(), matplotlib.rc_context():  # Optuna sets its style for the whole process
                # fANOVA's forest is random: seeded, a study's importances draw the same figure every time
                kwargs = {"evaluator": FanovaImportanceEvaluator(seed=0)} if name == "param_importances" else {}
                ax = getattr(ovm, f"plot_{name}")(study, **kwargs)
                fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
                fig.set_size_inches(8, 5)
                fig.set_dpi(100)
                fig.suptitle(study_title(study), fontsize=8)
                _save(fig, out / f"{name}.png")
            drawn.append(out / f"{name}.png")
        except (ValueError, RuntimeError) as e:
            print(f"tune: no {name} plot of study '{study.study_name}' ({e})", file=sys.stderr)
    return drawn
