"""The map of `python -m harness`: every subcommand's arguments and help, parsed into a namespace for harness.cli
to hand to its command's typed entry point."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from pathlib import Path


def results_dir() -> Path:
    """Where run records are kept: results/, or the folder a user names in $HARNESS_RESULTS."""
    return Path(os.environ.get("HARNESS_RESULTS", "results"))


DEFAULT_DATA = os.environ.get("HARNESS_DATA", "data")


DATA_HELP = (f"an .npz (x_train, y_train, x_test, y_test) or a folder with cifar-10-batches-py/ (default: "
             f"{DEFAULT_DATA!r}, set by $HARNESS_DATA)")
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda if PyTorch sees a GPU, else cpu)"
SET_HELP = "override a spec field, e.g. --set model.depth=56 or --set 'seeds=[0,1]' (a YAML value; repeatable)"
BUDGET_HELP = ("fraction of the paper's iterations (1.0 = 64k, 0.001 = 64); milestones and the warm-up ramp "
               "scale with it, plateau and early-stopping patience do not")


def _set_and_budget_args(p: argparse.ArgumentParser, budget: float = 1.0, budget_help: str = BUDGET_HELP) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    p.add_argument("--budget", type=float, default=budget, help=budget_help)


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", help="spec files or folders of specs (experiments/table6, ...)")
    _set_and_budget_args(p)


def _jobs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N runs at once on this machine, as Ray tasks (Ray starts embedded, nothing to set "
                        "up; CPU threads split between them, GPUs shared); no progress bars, a line per "
                        "evaluation point instead")
    c = p.add_argument_group("cluster (docs/cluster.md)")
    c.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None, metavar="HOST:PORT",
                   help="join this Ray cluster (default: $RAY_ADDRESS) and spread the runs over its nodes; the "
                        "store must be an mlflow server every node reaches")
    c.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="where runs keep checkpoints (default: beside the store); on a cluster a folder every "
                        "node mounts at the same path")
    c.add_argument("--claims-db", default=os.environ.get("HARNESS_CLAIMS_DB") or None, metavar="URL",
                   help="SQL database where runs are claimed, one writer each (default: the store's own; for an "
                        "http:// store, the server's --backend-store-uri, e.g. postgresql://user@host/mlflow)")
    c.add_argument("--cpus-per-run", type=int, default=None, metavar="N",
                   help="CPU threads each run trains on, Ray's num_cpus (default: this machine's split over "
                        "--jobs; 1 on a cluster)")
    c.add_argument("--gpus-per-run", type=float, default=None, metavar="F",
                   help="Ray's num_gpus per run; a fraction packs several runs on one GPU (default: the GPUs "
                        "split over --jobs, at most 1)")


def _group_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", type=int, default=None, metavar="K",
                   help="train up to K runs that share a model, batch size and dtype together, one batched kernel "
                        "per layer (seeds of a spec, specs differing in optimizer, schedule or data); each keeps its "
                        "own MLflow run. 1 = one at a time; default: what measured fastest on this device type "
                        "(1 on CPU)")


CHECK_HELP = {"k": "runs in the group, seeds 0..K-1 (default 4)", "dtype": "float64 or float32 (default: float64 "
              "where the device has it)", "compile": "a torch.compile mode, or eager (default: reduce-overhead on "
              "CUDA, else default)"}


def _check_group_parser(sub) -> None:
    c = sub.add_parser("check-group", help="K runs grouped vs each alone, seed-matched, under compile (CUDA graphs on "
                       "CUDA), float64 where the device has it: exit 0 when every member trains as alone")
    for flag, kind, default in (("k", int, 4), ("iters", int, 300), ("depth", int, 20), ("batch-size", int, 128),
                                ("lr", float, 0.01), ("dtype", str, None), ("compile", str, None)):
        c.add_argument(f"--{flag}", type=kind, default=default, help=CHECK_HELP.get(flag, f"default {default}"))
    _data_and_device_args(c)


def _publish_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--publish", action="store_true",
                   help=f"afterwards also write the store's finished runs into results/ (`results export`){what}; "
                        "without it the checkout's committed files are left as they are")


def _data_and_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=DEFAULT_DATA, help=DATA_HELP)
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data")
    p.add_argument("--device", default=None, help=DEVICE_HELP)


def _fastest_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fastest", nargs="?", const="reports/bench", default=None, metavar="BENCH_DIR",
                   help="on a CPU, train on the path `bench --json` measured fastest on this very CPU and thread count "
                        "for the net most runs train (runs at once, torch.compile, channels_last: the bench lines in "
                        "BENCH_DIR/*.jsonl, default reports/bench); it replaces --jobs and the specs' path fields, "
                        "which are not part of a run's hash; with no such line, the runs train as given")


def _batch_args(p: argparse.ArgumentParser) -> None:
    """How a batch of runs is spread: --jobs and the cluster options, --group; and whether MLflow samples the
    machine while they train."""
    _jobs_arg(p)
    _group_arg(p)
    _fastest_arg(p)
    p.add_argument("--no-system-metrics", action="store_true",
                   help="no system/... metrics (CPU, memory, GPU utilisation every 10 s, MLflow's system-metrics "
                        "monitor; also off with MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false)")


def _run_parser(sub) -> None:
    r = sub.add_parser("run", help="train specs (skips FINISHED runs, resumes killed ones)")
    _common_run_args(r)
    _data_and_device_args(r)
    r.add_argument("--force", action="store_true", help="start afresh even if a run of this spec exists")
    r.add_argument("--no-progress", action="store_true",
                   help="a line per evaluation point instead of a progress bar (the default where stderr is not a "
                        "terminal)")
    r.add_argument("--offline", metavar="DIR", default=None,
                   help="no MLflow: write each run to DIR/<spec_hash>/ (record.json, model/) for `import`; "
                        "for machines without MLflow, e.g. a lent GPU")
    _publish_arg(r, "")
    _batch_args(r)


def _import_parser(sub) -> None:
    im = sub.add_parser("import", help="log records of `run --offline` into the MLflow store (skips FINISHED)")
    im.add_argument("records", nargs="+", help="record.json files or folders holding them")
    _publish_arg(im, "")


def _results_parser(sub) -> None:
    rs = sub.add_parser("results", help="finished runs as JSON files in results/ (export), or back into MLflow "
                        "(import, skips FINISHED): the record that outlives the store (docs/results.md)")
    rs.add_argument("action", choices=("export", "import"),
                    help="export: every FINISHED run of the store to DIR/<group>/<run>-<spec_hash>.json, unchanged "
                         "files untouched; import: log the records under PATHS (default DIR) into the store")
    rs.add_argument("paths", nargs="*", help="import: record files or folders (results/, `run --offline` folders)")
    rs.add_argument("--dir", default=str(results_dir()),
                    help="the results folder (default: results, or $HARNESS_RESULTS)")


def _validate_parser(sub) -> None:
    v = sub.add_parser("validate", help="check specs without running them")
    _common_run_args(v)


def _bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="training throughput: DataLoader loop vs ours, MLflow overhead")
    b.add_argument("--model", default="resnet20",
                   help="resnetN or plainN (CIFAR nets of depth 6n+2: resnet20, plain32, ...), torchvision_resnet34")
    b.add_argument("--iters", type=int, default=10, help="timed iterations per variant")
    b.add_argument("--warmup", type=int, default=3, help="untimed iterations per variant")
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--data", default=None, help="an .npz to read images from (default: random uint8 images)")
    b.add_argument("--device", default=None, help=DEVICE_HELP)
    b.add_argument("--workers", type=int, default=2, help="DataLoader workers for the baseline")
    b.add_argument("--compile", action="store_true",
                   help="also time the fast variants (torch.compile; on CPU channels_last; on CUDA CUDA graphs, "
                        "fp32 and bf16)")
    b.add_argument("--variants", default=None,
                   help="comma-separated subset to time, e.g. dataloader,ours_graphed (default: all)")
    b.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="also time each of our variants as N runs at once (as run --jobs N does): total images/s, "
                        "ms/iter of each run")
    b.add_argument("--group", default="1", metavar="K",
                   help="also time K runs trained together (run --group K), as rows ours_group1 .. ours_groupK (and "
                        "ours_graphed_groupK with ours_graphed): total images/s, per run, x alone and x loader; a "
                        "list such as 2,8,16 times those sizes only")
    b.add_argument("--peer", metavar="DIR", default=None,
                   help="a checkout of akamaster/pytorch_resnet_cifar10: also time its own training loop "
                        "(trainer.train, resnet.resnetN) on the same data and device, the row `peer`")
    b.add_argument("--json", action="store_true",
                   help="print one JSON object (kept as a line of reports/bench/*.jsonl, `report` renders it)")


def _table_parser(sub) -> None:
    t = sub.add_parser("table", help="run table6 + ablations + ladder (+ tuned), skipping finished runs, then report")
    t.add_argument("folders", nargs="*", help="spec folders (default: experiments/table6 ablations ladder tuned)")
    _set_and_budget_args(t)
    _data_and_device_args(t)
    t.add_argument("--campaign", metavar="FILE", default=None,
                   help="run the campaign FILE instead (experiments/campaigns/*.yaml: its budget, overrides and "
                        "ordered specs and seeds); --set adds overrides, folders and --budget are refused")
    t.set_defaults(budget=None)  # 1.0 unless --campaign, whose file says its budget
    t.add_argument("--include-heavy", action="store_true", help="also run specs marked heavy (ResNet-1202)")
    t.add_argument("--force", action="store_true",
                   help="train every run again, even one the store or results/ (a committed record) holds finished")
    _publish_arg(t, " and the reports (`report --all`; what `make reproduce-table` does)")
    t.add_argument("--no-report", action="store_true", help="with --publish: do not write the reports afterwards")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--out", default="reports", help="where the reports go")
    _batch_args(t)


def _report_parser(sub) -> None:
    rp = sub.add_parser("report", help="write reports/ (markdown, CSV, figures) from the MLflow store")
    rp.add_argument("--out", default="reports", help="where to write; OUT/bench/*.jsonl become OUT/bench.md")
    rp.add_argument("--budget", dest="report_budget", type=float, default=None, metavar="BUDGET",
                    help="which runs (default: the budget of the latest finished table6 run)")
    rp.add_argument("--data-id", default=None,
                    help="which data (default: that of the latest finished table6 run): the runs' data_id tag, an "
                         ".npz file's name + ':' + the first 16 hex digits of the file's SHA-256 (`sha256sum FILE`), "
                         "e.g. cifar10-mini.npz:56ecc45f2a62d293, or torchvision-cifar10 for a cifar-10-batches-py "
                         "folder; the file name alone will do where it names one data id in the store. With no "
                         "match the error lists the budgets and data ids the store has")
    rp.add_argument("--all", action="store_true",
                    help="every campaign (budget, data) of the store, each into OUT/<data>-b<budget>/, the index "
                         "OUT/README.md and each Optuna study's figures into OUT/tuning/<study>/ (from "
                         "$HARNESS_OPTUNA_STORAGE, default mlruns/optuna.db; what `make report` and `table --publish` "
                         "write)")


def _diagnose_parser(sub) -> None:
    d = sub.add_parser("diagnose", help="which of a reproduction's choices cost how much: each departure from the "
                       "paper's recipe with its measured cost (from results/), and a campaign for the rest")
    d.add_argument("spec", nargs="?", default=None,
                   help="your setup as a spec (default: the paper's spec, changed by --set)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    d.add_argument("--paper", default="experiments/table6/resnet32.yaml", metavar="SPEC",
                   help="the paper's recipe (default: %(default)s)")
    d.add_argument("--base", default="experiments/ablations/baseline.yaml", metavar="SPEC",
                   help="where a generated one-factor run starts: the paper's recipe with a validation split "
                        "(default: %(default)s)")
    d.add_argument("--results", default=None, metavar="DIR",
                   help="the records to read (default: results/, or $HARNESS_RESULTS)")
    d.add_argument("--campaign", default=None, metavar="FILE",
                   help="where the campaign for unmeasured factors is written (default: build/diagnose/<name>.yaml)")
    d.add_argument("--budget", type=float, default=None,
                   help="that campaign's budget (default: the why-campaign's, experiments/campaigns/cpu-why.yaml)")
    d.add_argument("--seeds", type=int, nargs="+", default=[0, 1], metavar="S", help="its seeds (default: 0 1)")
    d.add_argument("--json", action="store_true", help="the diagnosis as JSON, for scripts")


def version() -> str:
    try:
        return metadata.version("resnet-repro")
    except metadata.PackageNotFoundError:  # a checkout run without `pip install -e .`
        return "unknown (not installed)"


def build_parser(prog: str = "harness") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Reproduce He et al. 2015 Table 6 on CIFAR-10: "
                                "declarative specs, tracked in MLflow, resumable, tuned with Optuna.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_run_parser, _import_parser, _results_parser, _validate_parser, _bench_parser, _table_parser,
                _report_parser, _check_group_parser, _diagnose_parser):
        add(sub)

    tu = sub.add_parser("tune", help="Optuna study over the LR schedule on the validation split, with pruning")
    tu.add_argument("spec", help="the spec to tune; its tune: section declares the search space")
    tu.add_argument("--trials", type=int, default=20, help="finished (complete or pruned) trials to reach")
    tu.add_argument("--study", default=None, help="study name (default: the spec's file name); reruns resume it")
    tu.add_argument("--storage", default=os.environ.get("HARNESS_OPTUNA_STORAGE", "sqlite:///mlruns/optuna.db"),
                    help="Optuna RDB URL (sqlite:///..., postgresql://...) or journal:PATH for a JournalStorage file")
    _set_and_budget_args(tu, 0.05, "fraction of the paper's iterations per trial")
    tu.add_argument("--data", default=DEFAULT_DATA, help=DATA_HELP + "; its test split is never read")
    tu.add_argument("--device", default=None, help=DEVICE_HELP)
    tu.add_argument("--jobs", "--workers", dest="workers", type=int, default=1, metavar="N",
                    help="N processes working on the one study, as `run --jobs N` trains N runs at once (--workers "
                         "is the same flag's older name)")
    _fastest_arg(tu)
    tu.add_argument("--heartbeat", type=int, default=30, help="seconds between trial heartbeats (RDB storage)")
    tu.add_argument("--seed", type=int, default=0, help="sampler seed: worker i of a call uses seed + i + the "
                    "trials already in the study, so a resumed study draws new points (tag sampler_seed)")
    tu.add_argument("--export", default=None, metavar="PATH", help="write the best trial as a spec, e.g. "
                    "experiments/tuned/resnet32.yaml")
    tu.add_argument("--plots", default=None, metavar="DIR",
                    help="also write Optuna's plots into DIR/<study>/ (they always go to the study's parent MLflow "
                         "run; reports/tuning/ is written by `report --all` and `make report`)")
    return p


def prog_name(argv0: str) -> str:
    """What the usage line calls the program: the script a user typed (`resnet-repro`), or `python -m harness`."""
    name = Path(argv0).name
    return "python -m harness" if name in ("__main__.py", "-m", "") else name


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed; a flag the chosen subcommand does not know is that subcommand's error (its usage,
    not the top-level one, which would not list the flags it takes)."""
    p = build_parser(prog_name(sys.argv[0]) if argv is None else "harness")
    args, extra = p.parse_known_args(argv)
    if extra:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001 - argparse's own
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args

