"""Reports from MLflow alone: Table 6 vs the paper, the ablations, the "why the gap" ladder, and figures.

Honesty rules, enforced here rather than left to the reader:
- the paper's figures stay in their own column; a measured number is called "CIFAR-10 test error" only
  when it came from the full training data, the official test set and budget 1.0;
- every header names the data, budget, device and date;
- a difference is called real only when it is outside seed noise (Welch's t-test over seeds, p < 0.05);
- beside the final-iteration test error stands the best-over-training test error of the same runs: what a
  repository that picks its best epoch on the test set would have claimed.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from harness import tracking
from harness.errors import UserError
from harness.models import build_model, count_params
from harness.spec import ModelSpec, load_specs

GROUPS = ("table6", "ablations", "ladder", "tuned")
PAPER_FILE = Path("experiments/paper.yaml")


def load_paper(path: Path = PAPER_FILE) -> dict:
    """The paper's figures: the working directory's copy if there is one (a user may extend it), else the one in
    this checkout, so `report` works from any directory."""
    for p in (path, Path(__file__).resolve().parents[1] / PAPER_FILE):
        if p.is_file():
            return yaml.safe_load(p.read_text())
    raise UserError(f"{path}: not found (expected the paper's Table 6 figures, as in the repository's {PAPER_FILE})")


def load_runs(groups=GROUPS) -> pd.DataFrame:
    """One row per MLflow run of the given experiments, with the metrics and tags the reports need."""
    uri = tracking.tracking_uri()
    db = tracking.sqlite_file(uri)
    if db is not None and not db.is_file():  # reading must not create an empty store
        raise UserError(f"{db}: no MLflow store there (MLFLOW_TRACKING_URI={uri}); train runs first (`make "
                        "reproduce-table`, `harness run`) or point MLFLOW_TRACKING_URI at the store to report on")
    c = tracking.client()
    rows = []
    for g in groups:
        exp = c.get_experiment_by_name(g)
        if exp is None:
            continue
        for r in c.search_runs([exp.experiment_id], max_results=5000):
            m, t, p = r.data.metrics, r.data.tags, r.data.params
            hist = tracking.metric_history(c, r.info.run_id, "test_error") if "test_error" in m else []
            rows.append({
                "group": g, "run_id": r.info.run_id, "run_name": r.info.run_name, "spec": t.get("spec_name"),
                "spec_hash": t.get("spec_hash"), "seed": int(p.get("seed", -1)), "budget": float(t.get("budget", 1)),
                "data": t.get("data", ""), "data_id": t.get("data_id", ""), "device": t.get("device", ""),
                "status": r.info.status, "failure": t.get("failure", ""), "official": t.get("official_test_set"),
                "arch": p.get("model.arch"), "depth": int(p.get("model.depth", 0)),
                "description": "", "start_time": r.info.start_time or 0, "end_time": r.info.end_time or 0,
                "test_error": m.get("test_error", math.nan), "val_error": m.get("val_error", math.nan),
                "train_error": m.get("train_error", math.nan),
                "best_test_error_over_training": min((v for _, v in hist), default=math.nan),
            })
    return pd.DataFrame(rows)


def newest_per_spec(df: pd.DataFrame) -> pd.DataFrame:
    """One run per experiment and spec_hash (resolved spec + seed + budget + data): the newest, the one `run`
    finds. A rerun with --force leaves the earlier run in the store, and counting both would count one seed twice
    in n and the std. (Two experiments may hold the same resolved spec: a ladder rung can be a table6 run.)"""
    if df.empty:
        return df
    df = df.sort_values("start_time")
    return df[~(df.spec_hash.notna() & df.duplicated(["group", "spec_hash"], keep="last"))]


def campaigns(df: pd.DataFrame) -> pd.DataFrame:
    """The (budget, data_id) pairs that have finished runs, newest first, with how many: what --budget and
    --data-id can name, listed when they name nothing."""
    fin = df[df.status == "FINISHED"] if not df.empty else df
    if fin.empty:
        return pd.DataFrame(columns=["budget", "data_id", "runs", "last"])
    return (fin.groupby(["budget", "data_id"]).agg(runs=("run_id", "size"), last=("end_time", "max"))
            .reset_index().sort_values("last", ascending=False))


def describe_campaigns(camps: pd.DataFrame) -> str:
    return ", ".join(f"budget {c.budget:g} on {c.data_id} ({c.runs} finished run{'s' if c.runs != 1 else ''})"
                     for c in camps.itertuples())


def pick_campaign(df: pd.DataFrame, budget: float | None, data_id: str | None) -> tuple[float, str]:
    """Default: the budget and data of the most recently finished Table 6 run. A data id may be given as its
    file name alone (`cifar10-mini.npz`) when that names one data id among the campaigns at hand."""
    uri = tracking.tracking_uri()
    camps = campaigns(df)
    if camps.empty:
        raise UserError(f"{uri}: no finished runs in its experiments {', '.join(GROUPS)}; train runs first "
                        "(`make reproduce-table`, `harness run`) or point MLFLOW_TRACKING_URI at another store")
    sel = camps[camps.budget == budget] if budget is not None else camps
    if data_id is not None:
        if data_id not in set(sel.data_id) and ":" not in data_id:  # a file name: the id's part before ':'
            ids = sorted({i for i in sel.data_id if i.split(":")[0] == data_id})
            if len(ids) > 1:
                raise UserError(f"--data-id {data_id}: names {len(ids)} data ids ({', '.join(ids)}); expected "
                                "one of them in full (file name:first 16 hex digits of its SHA-256)")
            data_id = ids[0] if ids else data_id
        sel = sel[sel.data_id == data_id]
    if sel.empty:
        asked = " ".join(([f"--budget {budget:g}"] if budget is not None else [])
                         + ([f"--data-id {data_id}"] if data_id is not None else []))
        raise UserError(f"{uri}: no finished runs for {asked}; the store has: {describe_campaigns(camps)} "
                        "(expected one of these with --budget and --data-id)")
    if budget is not None and data_id is not None:
        return budget, data_id
    fin = df[(df.status == "FINISHED") & df.budget.isin(sel.budget) & df.data_id.isin(sel.data_id)]
    pref = fin[fin.group == "table6"] if (fin.group == "table6").any() else fin
    last = pref.sort_values("end_time").iloc[-1]
    return float(last.budget), str(last.data_id)


def summarize(runs: pd.DataFrame) -> dict:
    ok = runs[runs.status == "FINISHED"]
    e = ok.test_error.to_numpy(dtype=float)
    return {"n": len(e), "mean": float(e.mean()) if len(e) else math.nan,
            "std": float(e.std(ddof=1)) if len(e) > 1 else math.nan,
            "best": float(e.min()) if len(e) else math.nan,
            "best_over_training": float(ok.best_test_error_over_training.mean()) if len(e) else math.nan,
            "values": e, "failed": int((runs.status == "FAILED").sum()),
            "unfinished": int((~runs.status.isin(["FINISHED", "FAILED"])).sum()),
            "failures": ",".join(sorted(set(runs.failure) - {""}))}


def fmt(s: dict) -> str:
    """Mean ± std (n) of the finished runs, naming the failed and unfinished ones: a mean over the seeds that
    survived, with the others left unsaid, flatters a recipe that diverges now and then."""
    lost = []
    if s["failed"]:
        lost.append(f"{s['failed']} failed" + (f": {s['failures']}" if s["failures"] else ""))
    if s["unfinished"]:
        lost.append(f"{s['unfinished']} unfinished")
    if not s["n"]:
        return "no finished run" + (f" ({'; '.join(lost)})" if lost else "")
    spread = f" ± {s['std']:.2f}" if s["n"] > 1 else ""
    return f"{s['mean']:.2f}{spread} (n={s['n']}{''.join('; ' + x for x in lost)})"


def noise_verdict(a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("this row", "the baseline")) -> str:
    """Welch's t-test over seeds; with fewer than two seeds on either side, noise cannot be judged. The verdict
    names the side that lacks seeds: a bare "n<2" in a row whose own n is 2 reads as a mistake."""
    short = [f"n={len(x)} in {name}" for name, x in zip(names, (a, b), strict=True) if len(x) < 2]
    if short:
        return f"noise unknown: {', '.join(short)}"
    from scipy.stats import ttest_ind

    if np.std(a) == 0 and np.std(b) == 0:
        return "outside noise" if a.mean() != b.mean() else "identical"
    p = ttest_ind(a, b, equal_var=False).pvalue
    return f"{'outside' if p < 0.05 else 'within'} seed noise (p={p:.2f})"


def header(title: str, df: pd.DataFrame, budget: float, official: bool, paper: dict) -> str:
    devices = ", ".join(sorted(set(df.device)))
    data = sorted(set(df.data))[0] if len(df) else "?"
    what = ("CIFAR-10 test error (%): full training data, official test set, budget 1.0" if official else
            f"error (%) on the held-out test split of `{data}` at budget {budget:g} "
            f"({budget * 64000:.0f} of the paper's 64,000 iterations): NOT CIFAR-10 test error, "
            "not comparable with the paper's column except as a trend")
    return (f"# {title}\n\n"
            f"- Measured: {what}\n- Data: {data}\n- Budget: {budget:g}\n- Device: {devices}\n"
            f"- Date: {dt.date.today().isoformat()} (generated by `python -m harness report` from MLflow)\n"
            f"- Paper: {paper['source']}\n\n")


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


def paper_cell(mean, std, best) -> str:
    if mean is None or pd.isna(mean):
        return "— (curves only in Fig. 6)"
    if std is None or pd.isna(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f} (best {best:.2f})"


def data_name(df: pd.DataFrame) -> str:
    """The data's file (or source) name, without the split sizes the `data` tag adds."""
    return sorted(set(df.data))[0].split(" train=")[0] if len(df) else "?"


def table6(df: pd.DataFrame, paper: dict, budget: float, official: bool, out: Path) -> pd.DataFrame:
    t6 = df[df.group == "table6"]
    rows = []
    for arch in ("resnet", "plain"):
        for depth in sorted(set(t6[t6.arch == arch].depth)):
            runs = t6[(t6.arch == arch) & (t6.depth == depth)]
            s = summarize(runs)
            key = f"{arch}{depth}"
            p, p_std, p_best = paper_figure(paper, key) if arch == "resnet" else (None, None, None)
            rows.append({
                "model": f"{'ResNet' if arch == 'resnet' else 'plain'}-{depth}", "depth": depth,
                "params_M": round(count_params(build_model(ModelSpec(arch=arch, depth=depth))) / 1e6, 2),
                "paper_test_error": p, "paper_std": p_std, "paper_best_run": p_best,
                "measured_mean": round(s["mean"], 2), "measured_std": round(s["std"], 2),
                "n": s["n"], "best_seed": round(s["best"], 2),
                "delta_vs_paper": round(s["mean"] - p, 2) if (official and p is not None and s["n"]) else None,
                "best_over_training_if_selected_on_test": round(s["best_over_training"], 2),
                "failed": s["failed"], "measured": fmt(s)})
    tab = pd.DataFrame(rows)
    tab.drop(columns="measured").to_csv(out / "table6.csv", index=False)
    col = "CIFAR-10 test error" if official else "measured error (this data/budget)"
    # The title says what the numbers are: a short run or a subset is not a reproduction of Table 6.
    title = ("Table 6 (He et al. 2015) reproduced: CIFAR-10 test error" if official else
             f"Table 6 (He et al. 2015) rerun at budget {budget:g} on {data_name(t6 if len(t6) else df)}: "
             "not CIFAR-10 test error")
    lines = [header(title, t6, budget, official, paper),
             f"| model | params (M) | paper test error | {col}: mean ± std (n) | best seed (final error) | "
             "Δ vs paper | best-over-training (selected on test) |", "|---|---|---|---|---|---|---|"]
    for r in tab.itertuples():
        delta = f"{r.delta_vs_paper:+.2f}" if r.delta_vs_paper is not None and not pd.isna(r.delta_vs_paper) \
            else "not comparable"
        lines.append(f"| {r.model} | {r.params_M} | {paper_cell(r.paper_test_error, r.paper_std, r.paper_best_run)} "
                     f"| {r.measured} | {r.best_seed:.2f} | {delta} | "
                     f"{r.best_over_training_if_selected_on_test:.2f} |")
    lines += ["", "The last column is the mean over seeds of the *lowest* test error seen at any evaluation point. "
              "Reporting it is selecting on the test set, which many popular reproductions do; the gap to the "
              "final-iteration column is how much that inflates a claim. No decision in this harness reads it."]
    for r in tab[tab.paper_best_run.notna()].itertuples():
        lines += ["", f"{r.model}: the paper's Table 6 figure {r.paper_best_run:.2f} is the best of its runs; the "
                  f"paper column shows their mean ± std ({r.paper_test_error:.2f} ± {r.paper_std:.2f}) instead, and "
                  "Δ is taken from that mean, because our column is a mean over seeds, not a best run."]
    res = tab[tab.model.str.startswith("ResNet")]
    if len(res) >= 2:
        lo, hi = f"ResNet-{res.depth.min()}", f"ResNet-{res.depth.max()}"
        a = t6[(t6.arch == "resnet") & (t6.depth == res.depth.min()) & (t6.status == "FINISHED")].test_error
        b = t6[(t6.arch == "resnet") & (t6.depth == res.depth.max()) & (t6.status == "FINISHED")].test_error
        lines += ["", f"Depth effect, {lo} vs {hi}: "
                  f"{noise_verdict(a.to_numpy(), b.to_numpy(), (lo, hi))}."]
    (out / "table6.md").write_text("\n".join(lines) + "\n")
    return tab


def compare_rows(df_rows: pd.DataFrame, base: pd.DataFrame, order: list[str]) -> list[dict]:
    b = summarize(base)
    out = []
    for name in order:
        runs = df_rows[df_rows.spec == name]
        s = summarize(runs)
        out.append({"name": name, "s": s, "delta": s["mean"] - b["mean"],
                    "noise": noise_verdict(s["values"], b["values"])})
    return out


def ablations(df: pd.DataFrame, paper: dict, budget: float, official: bool, out: Path, descriptions: dict) -> None:
    base = df[(df.group == "table6") & (df.spec == "resnet32")]
    ab = df[df.group == "ablations"]
    rows = compare_rows(ab, base, sorted(set(ab.spec)))
    b = summarize(base)
    lines = [header("Ablations: one factor away from the paper's ResNet-32 recipe", ab, budget, official, paper),
             f"Baseline: table6/resnet32, {fmt(b)}.\n",
             "| ablation | what changed | error: mean ± std (n) | Δ vs baseline | noise | "
             "best-over-training (selected on test) |", "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["s"]
        delta = f"{r['delta']:+.2f}" if s["n"] else "—"
        lines.append(f"| {r['name']} | {descriptions.get(('ablations', r['name']), '')} | {fmt(s)} | {delta} | "
                     f"{r['noise'] if s['n'] else '—'} | {s['best_over_training']:.2f} |")
    lines += ["", "Chance is 90 % error on 10 balanced classes: a row near 90 did not learn."]
    (out / "ablations.md").write_text("\n".join(lines) + "\n")


def tuned(df: pd.DataFrame, paper: dict, budget: float, official: bool, out: Path, descriptions: dict) -> bool:
    """Tuned schedules (chosen on validation by `harness tune`) vs the paper's, on test error measured once."""
    tu = df[df.group == "tuned"]
    if tu.empty:
        return False
    base = df[(df.group == "table6") & (df.spec == "resnet32")]
    lines = [header("Tuned LR schedule vs the paper's", tu, budget, official, paper),
             f"Paper schedule: table6/resnet32, {fmt(summarize(base))}. Tuned specs were selected on the "
             "validation split only; this table is the first time their test error is measured.\n",
             "| tuned spec | how it was chosen | error: mean ± std (n) | Δ vs paper schedule | noise |",
             "|---|---|---|---|---|"]
    for r in compare_rows(tu, base, sorted(set(tu.spec))):
        delta = f"{r['delta']:+.2f}" if r["s"]["n"] else "—"
        lines.append(f"| {r['name']} | {descriptions.get(('tuned', r['name']), '')} | {fmt(r['s'])} | {delta} | "
                     f"{r['noise']} |")
    (out / "tuned.md").write_text("\n".join(lines) + "\n")
    return True


def ladder(df: pd.DataFrame, paper: dict, budget: float, official: bool, out: Path, descriptions: dict):
    lad = df[df.group == "ladder"]
    names = sorted(set(lad.spec))
    rungs = [(n, lad[lad.spec == n], descriptions.get(("ladder", n), "")) for n in names]
    rungs.append(("paper_resnet32", df[(df.group == "table6") & (df.spec == "resnet32")],
                  "Last rung: batch 256 -> 128 = the paper's ResNet-32 recipe (the table6/resnet32 runs)"))
    lines = [header("Why the gap: from the seed log's setup to the paper's recipe, one factor per rung", lad,
                    budget, official, paper),
             "Rung order: the model comes first because the ImageNet stem (7x7/2 conv + max-pool) shrinks a 32x32 "
             "image to 8x8 before the first block, a loss no optimizer can undo; then the optimizer, because the "
             "schedule's lr drops only mean something for SGD's lr 0.1; then the schedule (the seed's plateau "
             "patience of 1,000 epochs never drops the lr within 64k iterations); batch size last, as the smallest "
             "change. Each Δ is what that one change bought, measured against the rung before it.\n",
             "| rung | change | error: mean ± std (n) | Δ vs previous rung | noise |", "|---|---|---|---|---|"]
    prev = None
    bars = []
    for name, runs, desc in rungs:
        s = summarize(runs)
        delta = f"{s['mean'] - prev['mean']:+.2f}" if prev and s["n"] and prev["n"] else "—"
        noise = noise_verdict(s["values"], prev["values"], ("this rung", "the previous rung")) if prev else "—"
        lines.append(f"| {name} | {desc} | {fmt(s)} | {delta} | {noise} |")
        bars.append((name, s))
        prev = s
    if bars and bars[0][1]["n"] and bars[-1][1]["n"]:
        total = bars[-1][1]["mean"] - bars[0][1]["mean"]
        lines += ["", f"Whole ladder: {bars[0][1]['mean']:.2f} → {bars[-1][1]['mean']:.2f} ({total:+.2f} points)."]
        if total > 0 and budget < 1:  # at the paper's budget this reading of a backwards ladder does not hold
            lines += ["", f"At this budget ({budget:g}) the ladder runs backwards: the paper's recipe (SGD at lr 0.1 "
                      "with drops at 50 % and 75 % of the run) needs its 64k iterations, while Adam's fast start "
                      "wins a short run. This measures short-run behaviour, not the gap at the paper's budget."]
    (out / "ladder.md").write_text("\n".join(lines) + "\n")
    return bars


def descriptions_of_specs() -> dict[tuple[str, str], str]:
    """(group, spec name) -> the spec's description, for the "what changed" columns; an invalid spec is named by
    `table` already and only loses its description here, so a report still comes out."""
    return {(g, path.stem): spec.description.replace("|", "/")
            for g in GROUPS if Path("experiments", g).exists()
            for path, spec in load_specs([f"experiments/{g}"])[0]}


def figures(df: pd.DataFrame, tab: pd.DataFrame, bars, paper: dict, budget: float, official: bool, out: Path):
    import matplotlib.pyplot as plt

    from harness.plots import learning_curve  # noqa: F401  (same look as the per-run curves)

    data = sorted(set(df.data))[0] if len(df) else ""
    label = "CIFAR-10 test error (%)" if official else f"error (%), {data.split(' ')[0]}, budget {budget:g}"
    if len(tab):  # a campaign without Table 6 runs (e.g. the ladder alone) gets no Table 6 figures
        # error vs depth
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for arch, color in (("ResNet", "C0"), ("plain", "C3")):
            sub = tab[tab.model.str.startswith(arch)]
            if len(sub):
                ax.errorbar(sub.depth, sub.measured_mean, yerr=sub.measured_std.fillna(0), marker="o", color=color,
                            capsize=3, label=f"{arch} (measured)")
        depths = sorted(int(k[6:]) for k in paper["test_error"] if int(k[6:]) <= 110)
        figs = [paper_figure(paper, f"resnet{d}") for d in depths]  # means where the paper gives them, as ours are
        ax.errorbar(depths, [m for m, _, _ in figs], yerr=[s or 0 for _, s, _ in figs], fmt="k*--", capsize=3,
                    label="ResNet (paper: full data, 64k it; 110: mean ± std of its runs)")
        ax.set_xlabel("depth")
        ax.set_ylabel(label)
        ax.set_title("Error vs depth", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "error_vs_depth.png")
        plt.close(fig)

        # Fig. 6 look: plain (left) and ResNet (right); thin dashed = train, bold = test
        c = tracking.client()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
        t6 = df[(df.group == "table6") & (df.status == "FINISHED")]
        for ax, arch in zip(axes, ("plain", "resnet"), strict=True):
            for i, depth in enumerate(sorted(set(t6[t6.arch == arch].depth))):  # one seed each, named in the legend
                run = t6[(t6.arch == arch) & (t6.depth == depth)].sort_values("seed").iloc[0]
                for key, lw, ls in (("train_error", 0.8, "--"), ("test_error", 2.0, "-")):
                    h = tracking.metric_history(c, run.run_id, key)
                    ax.plot([s for s, _ in h], [v for _, v in h], lw=lw, ls=ls, color=f"C{i}",
                            label=f"{arch}-{depth} (seed {run.seed})" if key == "test_error" else None)
            ax.set_title(f"{'plain' if arch == 'plain' else 'ResNet'} (thin dashed: train, bold: test)", fontsize=9)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        axes[0].set_ylabel(label)
        fig.tight_layout()
        fig.savefig(out / "curves_table6.png")
        plt.close(fig)

    # ladder bars
    if bars:
        fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
        names = [n for n, _ in bars]
        means = [s["mean"] for _, s in bars]
        stds = [0 if math.isnan(s["std"]) else s["std"] for _, s in bars]
        ax.bar(range(len(bars)), means, yerr=stds, capsize=4, color="C0")
        for i in range(1, len(bars)):
            if not (math.isnan(means[i]) or math.isnan(means[i - 1])):
                ax.annotate(f"{means[i] - means[i - 1]:+.1f}", (i, means[i]), ha="center", va="bottom",
                            xytext=(0, 4), textcoords="offset points", fontsize=8)
        ax.set_xticks(range(len(bars)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_title("Why the gap: one factor per rung (Δ vs previous rung)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "ladder.png")
        plt.close(fig)


def made_from(md: Path) -> str:
    """The budget, data and date in the header of a page written earlier: which runs that page is of."""
    fields = {}
    for line in md.read_text().splitlines()[:12]:
        key, _, value = line.removeprefix("- ").partition(": ")
        if line.startswith("- ") and key in ("Budget", "Data", "Date"):
            fields[key] = value.split(" (generated")[0]
    return f"budget {fields.get('Budget', '?')}, data {fields.get('Data', '?')}, written {fields.get('Date', '?')}"


def write_reports(out: Path = Path("reports"), budget: float | None = None, data_id: str | None = None) -> Path:
    df = newest_per_spec(load_runs())
    budget, data_id = pick_campaign(df, budget, data_id)
    df = df[(df.budget == budget) & (df.data_id == data_id)]
    official = budget == 1.0 and (df.official == "true").any()
    paper = load_paper()
    out.mkdir(parents=True, exist_ok=True)
    desc = descriptions_of_specs()
    tab, written = pd.DataFrame(), []
    if (df.group == "table6").any():
        tab = table6(df, paper, budget, official, out)
        written += ["table6.md", "table6.csv", "error_vs_depth.png", "curves_table6.png"]
    bars = []
    if (df.group == "ablations").any():  # a campaign without such runs (e.g. a GPU session's) gets no empty page
        ablations(df, paper, budget, official, out, desc)
        written.append("ablations.md")
    if (df.group == "ladder").any():
        bars = ladder(df, paper, budget, official, out, desc)
        written += ["ladder.md", "ladder.png"]
    if tuned(df, paper, budget, official, out, desc):
        written.append("tuned.md")
    figures(df, tab, bars, paper, budget, official, out)
    print(f"report: wrote {out}/{', '.join(written)} ({len(df)} runs, budget {budget:g}, {data_id})",
          file=sys.stderr)
    # A page of a group this campaign has no runs of stays as it was (it may be a committed result of a long
    # campaign), but never unsaid: the folder now holds pages of two sets of runs.
    for group, files in (("table6", ["table6.md", "table6.csv", "error_vs_depth.png", "curves_table6.png"]),
                         ("ablations", ["ablations.md"]), ("ladder", ["ladder.md", "ladder.png"]),
                         ("tuned", ["tuned.md"])):
        left = [out / f for f in files if f not in written and (out / f).exists()]
        if left:
            print(f"report: left {', '.join(map(str, left))} as {'they were' if len(left) > 1 else 'it was'} "
                  f"(no {group} runs for budget {budget:g} on {data_id}; {left[0].name} is from an earlier report: "
                  f"{made_from(left[0])})", file=sys.stderr)
    return out


def report(out: Path = Path("reports"), budget: float | None = None, data_id: str | None = None) -> int:
    """Write `out`/bench.md (if `out`/bench/ holds bench lines) and the pages of the campaign that `budget` and
    `data_id` name (default: that of the latest finished Table 6 run)."""
    from harness.bench import write_bench_report

    if bench := write_bench_report(out):  # first: it needs no runs in the store
        print(f"report: wrote {bench} from {out}/bench/*.jsonl", file=sys.stderr)
    write_reports(out, budget, data_id)
    return 0
