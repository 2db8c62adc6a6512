"""One group of runs, end to end: what harness.runner.execute does for one run, for each member of a group.

Each member finds or creates its own MLflow run (a FINISHED one is skipped, one that diverged before is not
retried, a killed one resumes from its own checkpoint), logs its own metrics at its own evaluation points, and
ends FINISHED with its model and learning curve, or FAILED with its `failure` tag, while the other members go on.
The pieces are runner's (find, create, resume, record a failure, log the model and the curve); this module only
wires them to harness.group's loop.
"""

from __future__ import annotations

import time

import torch

from harness import claims, group, runner, tracking
from harness.data import Arrays, DeviceData, to_device
from harness.spec import RunSpec
from harness.train import param_dtype


def _data_for(arrays: Arrays, run: RunSpec, device: torch.device, cache: dict) -> DeviceData:
    """One copy on the device per distinct data option set and dtype, shared by the members that use it."""
    key = (run.spec.data.model_dump_json(), run.spec.dtype)
    if key not in cache:
        cache[key] = to_device(arrays, run.spec.data, device, param_dtype(run.spec))
    return cache[key]


def execute_group(runs: list[RunSpec], arrays: Arrays, device: torch.device, force: bool = False,
                  progress: bool = True) -> list[str]:
    """The status of each run, in order: 'finished', 'skipped', 'diverged' or 'failed' (as runner.execute)."""
    c = tracking.client()
    statuses: dict[int, str] = {}
    members: list[group.Member] = []
    run_ids: dict[int, str] = {}
    seen: set[str] = set()
    cache: dict = {}
    index: dict[int, int] = {}  # id(member) -> its run's place in `runs`
    for i, run in enumerate(runs):
        exp_id = tracking.experiment_id(c, run.group)
        spec_hash = run.spec_hash(arrays.data_id)
        if spec_hash in seen:  # the same resolved spec twice: one run of it
            statuses[i] = "skipped"
            continue
        seen.add(spec_hash)
        ckpt = claims.checkpoint_dir() / f"{spec_hash}.pt"
        existing = None if force else tracking.find_run(c, exp_id, spec_hash)
        if existing is not None and (settled := runner._settled(run, existing)):
            statuses[i] = settled
            continue
        data = _data_for(arrays, run, device, cache)
        if existing is not None:
            run_ids[i] = runner._resume(c, run, existing, ckpt)
        else:
            run_ids[i] = runner._create(c, exp_id, run, arrays, data, device, ckpt)
        members.append(group.Member(run, data, ckpt, _on_eval(c, run_ids[i], run, progress)))
        index[id(members[-1])] = i
    if members:
        runner.log(f"group: {len(members)} run(s) trained together on {device}: "
                   + ", ".join(m.run.run_name for m in members))
    t0 = time.perf_counter()

    def on_end(m: group.Member, outcome) -> None:
        i = index[id(m)]
        if isinstance(outcome, Exception):
            statuses[i] = runner._record_failure(c, m.run, run_ids[i], outcome)
        else:
            statuses[i] = _record_finished(c, m, run_ids[i], outcome, time.perf_counter() - t0)

    try:
        group.train_group(members, device, on_end)
    except KeyboardInterrupt:  # members still training are marked KILLED; their checkpoints resume them
        for i, run_id in run_ids.items():
            if i not in statuses:
                c.set_terminated(run_id, "KILLED")
        raise
    except Exception as e:  # noqa: BLE001 - recorded on every member still training; the batch goes on
        for m in members:
            if index[id(m)] not in statuses:
                statuses[index[id(m)]] = runner._record_failure(c, m.run, run_ids[index[id(m)]], e)
    return [statuses[i] for i in range(len(runs))]


def _on_eval(c, run_id: str, run: RunSpec, progress: bool):
    log_seconds = [0.0]

    def on_eval(step: int, metrics: dict[str, float]) -> bool:
        log_seconds[0] += tracking.log_metrics(c, run_id, metrics, step)
        if not progress and "val_error" in metrics:
            runner.log_eval_point(run, step, metrics)
        return False

    on_eval.log_seconds = log_seconds  # type: ignore[attr-defined]
    return on_eval


def _record_finished(c, m: group.Member, run_id: str, final: dict[str, float], wall: float) -> str:
    """As runner records a finished run: the summary metrics, the model, the curve, FINISHED, the checkpoint gone."""
    run, data = m.run, m.data
    summary = {"final_iteration": final["iterations"], "train_seconds": final["train_seconds"],
               "mlflow_log_seconds": m.on_eval.log_seconds[0]}
    if "stopped_early_at" in final:
        summary["stopped_early_at"] = final["stopped_early_at"]
    tracking.log_metrics(c, run_id, summary, final["iterations"])
    runner._log_model(c, run_id, m.model)
    runner.log_curve(c, run_id, f"{run.run_name} ({data.description}, budget {run.budget:g})")
    c.set_terminated(run_id, "FINISHED")
    m.checkpoint.unlink(missing_ok=True)
    runner.log(f"{run.run_name}: FINISHED in {wall:.0f}s (in a group): test_error "
               f"{final.get('test_error', float('nan')):.2f}% ({data.description}, budget {run.budget:g})")
    return "finished"
