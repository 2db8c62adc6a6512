"""What a campaign's numbers say, and how a page writes them: a row's summary over its seeds, the noise verdict
between two rows, the paper's figure beside ours.

A difference is called real only when it is outside seed noise (Welch's t-test over seeds, p < 0.05), and a mean
names the runs it leaves out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind


@dataclass(frozen=True)
class Summary:
    """One row of a page (a model, an ablation, a rung): its runs' final test errors over seeds."""

    n: int  # finished runs
    mean: float
    std: float  # nan below two runs
    best: float
    best_over_training: float  # the mean of each run's lowest test error at any evaluation point
    values: np.ndarray  # the finished runs' final test errors
    failed: int
    unfinished: int
    failures: str  # the failure kinds, comma-separated


def summarize(runs: pd.DataFrame) -> Summary:
    ok = runs[runs.status == "FINISHED"]
    e = ok.test_error.to_numpy(dtype=float)
    return Summary(n=len(e), mean=float(e.mean()) if len(e) else math.nan,
                   std=float(e.std(ddof=1)) if len(e) > 1 else math.nan,
                   best=float(e.min()) if len(e) else math.nan,
                   best_over_training=float(ok.best_test_error_over_training.mean()) if len(e) else math.nan,
                   values=e, failed=int((runs.status == "FAILED").sum()),
                   unfinished=int((~runs.status.isin(["FINISHED", "FAILED"])).sum()),
                   failures=",".join(sorted(set(runs.failure) - {""})))


def fmt(s: Summary) -> str:
    """Mean ± std (n) of the finished runs, naming the failed and unfinished ones: a mean over the seeds that
    survived, with the others left unsaid, flatters a recipe that diverges now and then."""
    lost = []
    if s.failed:
        lost.append(f"{s.failed} failed" + (f": {s.failures}" if s.failures else ""))
    if s.unfinished:
        lost.append(f"{s.unfinished} unfinished")
    if not s.n:
        return "no finished run" + (f" ({'; '.join(lost)})" if lost else "")
    spread = f" ± {s.std:.2f}" if s.n > 1 else ""
    return f"{s.mean:.2f}{spread} (n={s.n}{''.join('; ' + x for x in lost)})"


def noise_verdict(a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("this row", "the baseline")) -> str:
    """Welch's t-test over seeds where both sides have two or more. Where one side has a single seed, its seed
    spread is unknown and the other side's stands for both: Student's t-test with the pooled variance (a single
    run adds nothing to it), so a campaign that gave seeds to its shallow nets only still judges their depth
    effect, and says whose spread it assumed. With one seed on both sides (or none), noise cannot be judged; the
    verdict names the side that lacks seeds: a bare "n<2" in a row whose own n is 2 reads as a mistake."""
    sizes = (len(a), len(b))
    if min(sizes) == 0 or max(sizes) < 2:
        short = [f"n={len(x)} in {name}" for name, x in zip(names, (a, b), strict=True) if len(x) < 2]
        return f"noise unknown: {', '.join(short)}"
    if np.std(a) == 0 and np.std(b) == 0:
        verdict = "outside noise" if a.mean() != b.mean() else "identical"
    else:
        # Student's pooled test where one side is a single run: its deviation is 0 and adds no degree of freedom.
        p = ttest_ind(a, b, equal_var=min(sizes) < 2).pvalue
        verdict = f"{'outside' if p < 0.05 else 'within'} seed noise (p={p:.2f})"
    if min(sizes) == 1:
        single, spread = (names[0], names[1]) if sizes[0] == 1 else (names[1], names[0])
        return f"{verdict}, taking {spread}'s seed spread for {single} (n=1)"
    return verdict


def provenance(runs: pd.DataFrame) -> str:
    """'' where a row's finished seeds share machine (device and threads) and commit; else what they mix: a spread
    over seeds of several machines or commits measures those differences too, not seed noise alone."""
    ok = runs[runs.status == "FINISHED"] if "status" in runs else runs
    machines = len(set(ok.device)) if "device" in ok else 1
    commits = len({c.removesuffix("-dirty") for c in ok.commit}) if "commit" in ok else 1
    mixed = [f"{n} {what}" for n, what in ((machines, "machines"), (commits, "commits")) if n > 1]
    return f"seeds of mixed provenance: {' and '.join(mixed)}" if mixed else ""


def verdict(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> str:
    """noise_verdict between two rows' finished runs, saying where a spread it used (a side with two or more seeds)
    mixes machines or commits."""
    done = [runs[runs.status == "FINISHED"] if "status" in runs else runs for runs in (a, b)]
    values = [d.test_error.to_numpy(dtype=float) for d in done]
    said = noise_verdict(*values, names)
    if said.startswith("noise unknown"):
        return said
    marks = [f"{name}'s {mixed}" for name, runs in zip(names, done, strict=True)
             if len(runs) > 1 and (mixed := provenance(runs))]
    return f"{said}; {'; '.join(marks)}" if marks else said


def paper_figure(paper: dict, key: str) -> tuple[float | None, float | None, float | None]:
    """(mean, std, best run) of the paper's figure for `key`, to set beside a mean over our seeds. Where the paper
    gives its best run and the mean ± std of its runs (ResNet-110: 6.43, the best of 5, and 6.61 ± 0.16; the key
    `<key>_mean_std` in paper.yaml), our mean is compared with its mean: a mean set against a best run makes a
    reproduction look worse than it is. Elsewhere the paper gives one figure: std and best are None."""
    figure = paper["test_error"].get(key)
    if f"{key}_mean_std" in paper:
        mean, std = paper[f"{key}_mean_std"]
        return float(mean), float(std), figure
    return figure, None, None

