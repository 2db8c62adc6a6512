"""The numbers of the Fig. 6 curves: each Table 6 depth's train and test error against iteration, averaged over
its finished seeds, with the test error's std over those seeds.

One seed's curve is one draw of the noise: where a depth has several seeds, its line is their mean and its band
their spread, so two depths are compared with the noise in view. A mean is taken only at the iterations every
seed evaluated (runs of one spec share them), so no point is the mean of fewer seeds than its label says.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report.looks import LOOKS, fig6_archs
from harness.report.stats import provenance
from harness.tracking import store as tracking
from harness.tracking.figures import Curve, History


def mean_curve(label: str, trains: list[History], tests: list[History]) -> Curve:
    """The mean train and test error over the seeds' histories, at the steps all of them have; the test error's
    std over seeds (ddof 1) where there are two seeds or more."""
    def common(hists: list[History]) -> list[int]:
        steps = set.intersection(*(set(dict(h)) for h in hists)) if hists else set()
        return sorted(steps)

    def mean(hists: list[History]) -> tuple[History, tuple[float, ...]]:
        steps = common(hists)
        values = np.array([[dict(h)[s] for s in steps] for h in hists], dtype=float).reshape(len(hists), len(steps))
        std = tuple(values.std(0, ddof=1)) if len(hists) > 1 else ()
        return list(zip(steps, values.mean(0) if len(hists) else [], strict=True)), std

    train, _ = mean(trains)
    test, std = mean(tests)
    return Curve(label, train, test, std)


def fig6_panels(df: pd.DataFrame) -> dict[str, list[Curve]]:
    """For each architecture drawn in Fig. 6 (its panel, left to right), under its label, one curve per depth of the
    finished Table 6 runs, named with its seeds."""
    c = tracking.client()
    t6 = df[(df.group == "table6") & (df.status == "FINISHED")]
    panels: dict[str, list[Curve]] = {}
    for arch in fig6_archs():
        label = LOOKS[arch].label
        panels[label] = []
        for depth in sorted(set(t6[t6.arch == arch].depth)):
            runs = t6[(t6.arch == arch) & (t6.depth == depth)].sort_values("seed")
            seeds = ", ".join(map(str, runs.seed))
            mixed = provenance(runs)  # a band over seeds of several machines or commits says so
            name = f"{label}-{depth} " + (f"(seed {seeds})" if len(runs) == 1 else
                                          f"(mean ± std of seeds {seeds}{'; ' + mixed if mixed else ''})")
            hists = [[tracking.metric_history(c, rid, k) for rid in runs.run_id] for k in ("train_error", "test_error")]
            panels[label].append(mean_curve(name, *hists))
    return panels
