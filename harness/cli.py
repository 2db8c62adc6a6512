"""`python -m harness --help` is the map: one subcommand per job.

Parsing only: each handler turns its flags into the typed call of one command module (run, table, report, tune,
bench), imported inside the handler so that `--help`, `validate` and a bad flag answer without loading torch,
MLflow, Optuna or Ray; every other module imports at its top. Nothing a user runs writes into the checkout's
committed results/ and reports/ unless asked: `run`, `table` and `import` with `--publish` are followed by
`results export` (records that outlive the store), and `table --publish` by `report --all` (what `make
reproduce-table` does). A UserError from any of them is one line and exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from harness.errors import UserError
from harness.parser import parse, results_dir


def batch_options(a):
    """The one value `run` and `table` hand down. Bars only on a terminal: in a log file or CI a bar is hundreds of
    carriage returns on one line, so there each evaluation point gets a line of its own (as under --no-progress)."""
    from harness.batch.options import BatchOptions, Cluster
    from harness.tracking.claims import Places

    where = Places(Path(a.checkpoint_dir).resolve() if a.checkpoint_dir else None, a.claims_db or None)
    return BatchOptions(a.data, download=a.download, device=a.device, force=getattr(a, "force", False),
                        offline=Path(a.offline) if getattr(a, "offline", None) else None,
                        progress=not a.no_progress and sys.stderr.isatty(), jobs=a.jobs, group=a.group,
                        cluster=Cluster(a.address, a.cpus_per_run, a.gpus_per_run), places=where,
                        system_metrics=not a.no_system_metrics, fastest=Path(a.fastest) if a.fastest else None,
                        publish=results_dir() if getattr(a, "publish", False) else None)


def cmd_validate(a) -> int:
    from harness.run.validate import validate

    return validate(a.specs, a.overrides, a.budget)


def cmd_run(a) -> int:
    from harness.run.command import run

    code = run(a.specs, batch_options(a), a.overrides, a.budget)
    if a.publish and not a.offline:  # an offline run's record is its folder's record.json until `import`
        _export_results()
    return code


def _export_results() -> None:
    """After a batch with --publish: the store's finished runs into results/, where they outlive the store."""
    from harness.tracking.records import export_results

    export_results(results_dir())


def cmd_import(a) -> int:
    from harness.run.command import import_records

    code = import_records(a.records)
    if a.publish:
        _export_results()
    return code


def cmd_results(a) -> int:
    from harness.tracking.importing import import_results
    from harness.tracking.records import export_results

    if a.action == "export":
        export_results(Path(a.dir))
        return 0
    return import_results([Path(d) for d in a.paths or [a.dir]])


def cmd_tune(a) -> int:
    from harness.tune.command import TuneOptions, main

    return main(TuneOptions(spec=a.spec, study=a.study, storage=a.storage, trials=a.trials, budget=a.budget,
                            data=a.data, workers=a.workers, heartbeat=a.heartbeat, seed=a.seed, plots=a.plots,
                            overrides=tuple(a.overrides), device=a.device, export=a.export,
                            fastest=Path(a.fastest) if a.fastest else None))


def cmd_table(a) -> int:
    from harness.run.table import table

    if a.campaign and (a.folders or a.budget is not None):
        raise UserError(f"{a.campaign}: --campaign names its specs and budget itself; expected no spec folders and "
                        f"no --budget with it, got {' '.join(a.folders) or '--budget ' + format(a.budget, 'g')}")
    code, data_id = table(a.folders, batch_options(a), a.overrides, 1.0 if a.budget is None else a.budget,
                          a.include_heavy, a.campaign, results_dir())
    if not a.publish:
        print("table: records stay in the MLflow store (--publish: also results/, reports/)", file=sys.stderr)
        return code
    _export_results()
    if not a.no_report:  # every campaign's pages, this table's among them, each in a folder of its own
        _report(Path(a.out), None, None, every=True)
    return code


def _report(out: Path, budget: float | None, data_id: str | None, every: bool) -> int:
    """`out`/bench.md from the bench lines kept in `out`/bench/ (it needs no runs in the store), then the pages."""
    from harness.bench.render import write_bench_report
    from harness.report.command import report

    if bench := write_bench_report(out):
        print(f"report: wrote {bench} from {out}/bench/*.jsonl", file=sys.stderr)
    return report(out, budget, data_id, every=every)


def cmd_report(a) -> int:
    return _report(Path(a.out), a.report_budget, a.data_id, every=a.all)


def cmd_bench(a) -> int:
    from harness.bench.command import BenchOptions, bench

    return bench(BenchOptions(a.model, iters=a.iters, warmup=a.warmup, batch_size=a.batch_size, data=a.data,
                              device=a.device, workers=a.workers, fast=a.compile, variants=a.variants, jobs=a.jobs,
                              peer=a.peer, as_json=a.json, group=a.group))


def cmd_check_group(a) -> int:
    from harness.bench.check import GroupCheck, check_group

    return check_group(GroupCheck(**{k: v for k, v in vars(a).items() if k not in ("func", "command")}))


def cmd_diagnose(a) -> int:
    from harness.report.diagnosis import DiagnoseOptions, diagnose

    return diagnose(DiagnoseOptions(Path(a.spec) if a.spec else None, a.overrides, Path(a.paper), Path(a.base),
                                    Path(a.results) if a.results else results_dir(),
                                    Path(a.campaign) if a.campaign else None, a.budget, a.seeds, a.json))


HANDLERS = {"run": cmd_run, "import": cmd_import, "results": cmd_results, "validate": cmd_validate, "bench": cmd_bench,
            "table": cmd_table, "report": cmd_report, "check-group": cmd_check_group, "tune": cmd_tune,
            "diagnose": cmd_diagnose}
STORE_COMMANDS = ("run", "table", "report", "tune", "import")  # those that read or write the MLflow store


def main(argv=None) -> int:
    from harness.core.stop import Terminated, stop_signals

    # MLflow's INFO lines (store creation, migrations) say nothing a user acts on; its warnings stay
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    args = parse(argv)
    try:
        with stop_signals():  # SIGTERM (a scheduler's stop) ends the command as Ctrl-C does
            if args.command in STORE_COMMANDS and not getattr(args, "offline", None):
                from harness.tracking.store import check_store

                check_store()  # before any data is loaded: an unreachable store is one line in seconds
            return HANDLERS[args.command](args)
    except UserError as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # runs in flight are marked KILLED in MLflow and keep their checkpoints
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}: the same command resumes killed runs from their last checkpoint", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
