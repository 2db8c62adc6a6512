"""How a bench result reads: the table one `bench` call prints, and reports/bench.md, rendered by `report` from
every `bench --json` line kept under reports/bench/.

Both renderings of a result live here so that they show the same figures in the same units; `bench` measures and
`report` collects, and neither needs the other.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import UserError


def alone_of(name: str, v: dict) -> str | None:
    """The variant a group row is set against alone, None for any other row; from the row's own fields, or from its
    name in a line that `bench` wrote before rows carried them."""
    if "kind" in v:
        return v["variant"] if v["kind"] == "group" else None
    return name.split("_group")[0] if "_group" in name else None


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def print_result(r: dict, jobs: int, threads: int, eval_every: int) -> None:
    """The terminal table of one bench call: `jobs` runs at once in its _xN rows, `threads` CPU threads each;
    MLflow's overhead is set against `eval_every` iterations of the fastest step."""
    peer = r["peer"]
    print(f"{r['date']}  {r['device']}  {r['model']} ({r['params']:,} params)  batch {r['batch_size']}, "
          f"{r['iters']} iterations, torch {r['torch']}")
    print(f"{'variant':<28}{'images/s':>10}{'ms/iter':>10}{'64k run':>10}{'GFLOP/s':>10}{'x loader':>10}"
          + (f"{'x peer':>10}" if peer else "") + f"{'peak MB':>10}{'warm-up s':>10}")
    for vname, v in r["variants"].items():
        ratio = "-" if v["speedup_vs_dataloader"] is None else f"{v['speedup_vs_dataloader']:.2f}"
        print(f"{vname:<28}{v['images_per_s']:>10.1f}{v['ms_per_iter']:>10.2f}"
              f"{duration(v['projected_64k_run_s']):>10}{v['achieved_gflop_s']:>10.1f}{ratio:>10}"
              + (f"{v['speedup_vs_peer']:>10.2f}" if peer else "") + f"{v['peak_mem_mb']:>10.0f}{v['warmup_s']:>10.1f}")
    if peer:
        print(f"peer: its own trainer.train() and resnet.{r['model']}() from {peer}, {r['dataloader_workers']} "
              "DataLoader workers")
    for vname, v in r["variants"].items():
        if alone := alone_of(vname, v):
            ratio = v.get("speedup_vs_alone", v.get("speedup_vs_ours"))
            print(f"{vname}: {v['runs']} run(s) trained together: {v['images_per_s']:.1f} images/s in all, "
                  f"{v['images_per_s_per_run']:.1f} per run, x{ratio} against one run of {alone} alone")
    if jobs > 1:
        print(f"_x{jobs} rows: {jobs} runs at once, {threads} CPU thread(s) each; images/s, GFLOP/s, "
              f"x loader and peak MB are their total, ms/iter and the 64k run each run's")
    if r["device"].startswith("cpu"):
        print("peak MB: this process's resident memory high-water mark during the row (Linux; DataLoader worker "
              "processes not counted)")
    print(f"fp32 matmul on this device: {r['matmul_gflop_s']} GFLOP/s; one training image = "
          f"{r['train_gflop_per_image']} GFLOP")
    print(f"our loader alone (gather + normalize + crop/flip): {r['loader_ms_per_batch']} ms per batch = "
          f"{r['loader_pct_of_fastest_iter']}% of the fastest iteration; the baseline's transforms: "
          f"{r['transforms_cpu_ms_per_batch']} ms of CPU per batch")
    if r["mlflow_log_ms_per_eval_point"] is None:
        print("MLflow: not installed here, overhead not measured")
        return
    print(f"MLflow: {r['mlflow_log_ms_per_eval_point']} ms per evaluation point = "
          f"{r['mlflow_overhead_pct']}% of step time at the paper cadence (every {eval_every} iterations); "
          f"{r['mlflow_overhead_pct_if_logged_every_step']}% if logged every step")


_BENCH_COLUMNS = [("images/s", "images_per_s", "{:,.1f}"), ("ms/iter", "ms_per_iter", "{:.2f}"),
                  ("64k-iteration run", "projected_64k_run_s", None),
                  ("× DataLoader", "speedup_vs_dataloader", "{:.2f}"), ("× peer", "speedup_vs_peer", "{:.2f}"),
                  ("GFLOP/s", "achieved_gflop_s", "{:,.1f}"), ("peak MB", "peak_mem_mb", "{:,.0f}"),
                  ("warm-up s", "warmup_s", "{:.1f}"), ("runs together", "runs", "{}"),
                  ("images/s per run", "images_per_s_per_run", "{:,.1f}"), ("× alone", "speedup_vs_alone", "{:.2f}")]
_GROUP_ONLY = {"runs", "images_per_s_per_run", "speedup_vs_alone"}  # shown where a bench --group K row is


def _shown(key: str, variants: dict) -> bool:
    if key in _GROUP_ONLY and not any(alone_of(name, v) for name, v in variants.items()):
        return False
    return any(v.get(key) is not None for v in variants.values())


def _with_alone_ratio(variants: dict) -> dict:
    """Each group row's × alone, from its base variant's images/s in the same bench run where the record predates
    the recorded field."""
    out = {}
    for name, v in variants.items():
        base = variants.get(alone_of(name, v) or "")
        if base and v.get("speedup_vs_alone") is None:
            v = {**v, "speedup_vs_alone": round(v["images_per_s"] / base["images_per_s"], 2)}
        out[name] = v
    return out


def _bench_section(r: dict) -> list[str]:
    r = {**r, "variants": _with_alone_ratio(r["variants"])}
    g = r.get
    about = (f"Batch {g('batch_size', '?')}, {g('iters', '?')} timed iterations, {g('dataloader_workers', '?')} "
             f"DataLoader workers; fp32 matmul {g('matmul_gflop_s', '?')} GFLOP/s; one training image "
             f"{g('train_gflop_per_image', '?')} GFLOP." + (f" Peer: {r['peer']}." if g("peer") else ""))
    if r["device"].startswith("cpu") and not g("peak_mem_per_row"):
        about += (" Peak MB of the one-run rows here is the process's largest so far, not each row's own (bench "
                  "did not reset it then).")
    cols = [c for c in _BENCH_COLUMNS if _shown(c[1], r["variants"])]
    lines = [f"### {r['model']} on {r['device']}, {g('date', '?')}, torch {g('torch', '?')}", "", about, "",
             "| variant | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, v in r["variants"].items():
        cells = []
        for _, key, fmt in cols:
            x = v.get(key)
            cells.append("—" if x is None else duration(x) if key == "projected_64k_run_s" else fmt.format(x))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    extra = []
    if g("loader_ms_per_batch") is not None:
        extra.append(f"our loader alone {r['loader_ms_per_batch']} ms per batch "
                     f"({r['loader_pct_of_fastest_iter']} % of the fastest iteration)")
    if g("transforms_cpu_ms_per_batch") is not None:
        extra.append(f"the DataLoader row's transforms {r['transforms_cpu_ms_per_batch']} ms of CPU per batch")
    if g("mlflow_log_ms_per_eval_point") is not None:
        extra.append(f"MLflow {r['mlflow_log_ms_per_eval_point']} ms per evaluation point "
                     f"({r['mlflow_overhead_pct']} % of step time at the paper's cadence)")
    if extra:
        text = "; ".join(extra)
        lines += ["", text[0].upper() + text[1:] + "."]
    return lines


def write_bench_report(out: Path) -> Path | None:
    """<out>/bench.md from every `bench --json` line kept in <out>/bench/*.jsonl, so that the benchmark tables a
    reader sees are rendered from the measurements, not typed. Nothing is written if a line is not bench JSON."""
    files = sorted((out / "bench").glob("*.jsonl"))
    if not files:
        return None
    lines = ["# Training throughput: `python -m harness bench` runs", "",
             f"Rendered by `python -m harness report` from {len(files)} file(s) of `bench --json` lines under "
             f"`{out}/bench/`, one table per bench run. Rows `<variant>_xN` are N runs at once on one device: their "
             "images/s, GFLOP/s, × columns and peak MB are the N runs' total, ms/iter and the 64k-iteration run each "
             "run's own. The 64k-iteration run is the projected training time of a paper-length run at that rate."]
    for f in files:
        lines += ["", f"## `{f.name}`"]
        for n, raw in enumerate(f.read_text().splitlines(), 1):
            if not raw.strip():
                continue
            try:
                r = json.loads(raw)
                lines += ["", *_bench_section(r)]
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
                what = e.msg if isinstance(e, json.JSONDecodeError) else f"{type(e).__name__}: {e}"
                raise UserError(f"{f}:{n}: not a `bench --json` line ({what}); expected one JSON object with "
                                "model, device and variants") from e
    target = out / "bench.md"
    tmp = target.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(target)
    return target

