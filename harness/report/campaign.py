"""The runs a report is of: the MLflow store read into one table and the campaign (budget and data) picked; what
their numbers say is harness.report.stats.

A campaign is one budget on one data id: numbers of different budgets or data are never pooled, and a rerun's
earlier run never counts twice.
"""

from __future__ import annotations

import math

import pandas as pd

from harness.core.data_tag import DataTag
from harness.core.groups import REPORTED
from harness.errors import UserError
from harness.tracking import store as tracking
from harness.tracking.experiments import group_experiments
from harness.tracking.inputs import NOTE
from harness.tracking.records import TIMES_TAG
from harness.tracking.run_facts import RUN_LINE

# The reported groups, and "tuning": a study's spec trained as it is, at the paper's schedule, is the twin a tuned
# spec is set against on tuned.md (its `tuned.source`); the studies' own runs (parent and trials) are not read.
GROUPS = tuple(g.name for g in REPORTED) + ("tuning",)


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
        ids = group_experiments(c, g)
        for r in c.search_runs(ids, max_results=5000) if ids else ():
            m, t, p = r.data.metrics, r.data.tags, r.data.params
            if "mlflow.parentRunId" in t or t.get("role") == "study":  # a study and its trials: no run of a spec
                continue
            hist = tracking.metric_history(c, r.info.run_id, "test_error") if "test_error" in m else []
            rows.append({
                "group": g, "run_id": r.info.run_id, "run_name": r.info.run_name, "spec": t.get("spec_name"),
                "spec_hash": t.get("spec_hash"), "seed": int(p.get("seed", -1)), "budget": float(t.get("budget", 1)),
                "data": t.get("data", ""), "data_id": t.get("data_id", ""), "device": t.get("device", ""),
                "commit": t.get("git_commit", ""),
                "split": split_of(t.get("data", "")),
                "status": r.info.status, "failure": t.get("failure", ""), "official": t.get("official_test_set"),
                "arch": p.get("model.arch"), "depth": int(p.get("model.depth", 0)),
                "batch_size": int(p.get("batch_size", 0)),
                "description": t.get(NOTE, "").split(RUN_LINE)[0].replace("|", "/"),
                "tuned_source": t.get("tuned.source", ""),
                "start_time": r.info.start_time or 0,
                "end_time": 0 if TIMES_TAG in t else (r.info.end_time or 0),  # an import's time dates no page
                "test_error": m.get("test_error", math.nan), "val_error": m.get("val_error", math.nan),
                "train_error": m.get("train_error", math.nan),
                "best_test_error_over_training": min((v for _, v in hist), default=math.nan),
            })
    return pd.DataFrame(rows)


def descriptions(df: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(group, spec name) -> the description its newest run trained under (its `mlflow.note.content`, which the
    record keeps), for the "what changed" columns: the pages come from the runs alone, so `make report` on a fresh
    clone writes them as they were, whatever the spec files say now."""
    ordered = df.sort_values("start_time") if len(df) else df
    return {(r.group, r.spec): r.description for r in ordered.itertuples() if r.description}


def split_of(data: str) -> str:
    """The split, "45k/5k" (train/validation) or "50k" (no validation split), from a run's `data` tag: Table 6
    trains on all 50k training images, the ablations and the ladder hold 5k out, and a row must say which."""
    t = DataTag.read(data)
    if not t.train:
        return "?"
    counts = [n for n in (t.train, t.val) if n]
    return "/".join(f"{c / 1000:g}k" if c % 100 == 0 else str(c) for c in counts)  # 45k/5k, 47.5k/2.5k, 3661/407


def splits(runs: pd.DataFrame) -> str:
    return ", ".join(sorted(set(runs.split))) if len(runs) else "—"


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
