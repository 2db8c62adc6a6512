"""One group of runs, end to end: what harness.batch.one does for one run, for each member of a group.

Each member is claimed, finds or creates its own record through the same harness.tracking.sinks destination a run
alone uses (an MLflow run, or a folder under --offline): a finished one is skipped, one that diverged before is not
retried, a killed one resumes from its own checkpoint. It logs its own metrics at its own evaluation points and
ends FINISHED with its model and learning curve, or FAILED with its `failure` tag, while the other members go on.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import replace

import torch

from harness.batch.options import BatchOptions
from harness.core import grouped as group
from harness.core.data import Arrays, DeviceData, to_device
from harness.core.spec import RunSpec
from harness.core.train import Trainee, param_dtype
from harness.tracking import claims
from harness.tracking.sinks import Sink, log, open_sink
from harness.tracking.status import Status


def _data_for(arrays: Arrays, run: RunSpec, device: torch.device, cache: dict) -> DeviceData:
    """One copy on the device per distinct data option set and dtype, shared by the members that use it."""
    key = (run.spec.data.model_dump_json(), run.spec.dtype)
    if key not in cache:
        cache[key] = to_device(arrays, run.spec.data, device, param_dtype(run.spec))
    return cache[key]


def execute_group(runs: list[RunSpec], arrays: Arrays, device: torch.device, o: BatchOptions) -> list[Status]:
    """The status of each run, in order, as harness.batch.one.execute returns it for a run alone."""
    where = f" (in a group of {len(runs)})"
    dest = replace(o.destination, progress=False)  # the group's lines, not one bar per member
    sinks = [open_sink(r, arrays, device, dest, where) for r in runs]
    paths = [s.checkpoint for s in sinks]
    twice = {i for i, p in enumerate(paths) if p in paths[:i]}  # the same resolved spec again: one run of it
    with ExitStack() as held:
        if not o.offline:  # one writer per run and checkpoint, as for a run alone
            for i, (r, s) in enumerate(zip(runs, sinks, strict=True)):
                if i not in twice:
                    held.enter_context(claims.claimed(s.spec_hash, r.run_name, log, o.places))
        return _train_together(runs, sinks, arrays, device, twice)


def _train_together(runs: list[RunSpec], sinks: list[Sink], arrays: Arrays, device: torch.device,
                    twice: set[int]) -> list[Status]:
    statuses: dict[int, Status] = dict.fromkeys(twice, Status.SKIPPED)
    members: list[Trainee] = []
    place: dict[int, int] = {}  # id(member) -> its run's place in `runs`
    cache: dict = {}
    for i, (run, sink) in enumerate(zip(runs, sinks, strict=True)):
        if i in twice:
            continue
        if settled := sink.settled():
            statuses[i] = settled
            continue
        data = _data_for(arrays, run, device, cache)
        sink.open(data)
        try:
            m = Trainee(run, data, device, sink.checkpoint, sink.on_eval, progress=False, on_restart=sink.on_restart)
        except Exception as e:  # noqa: BLE001 - recorded on the run; the group goes on
            statuses[i] = sink.failed(e)
            continue
        members.append(m)
        place[id(m)] = i
    if members:
        log(f"group: {len(members)} run(s) trained together on {device}: "
            + ", ".join(m.run.run_name for m in members))
    t0 = time.perf_counter()

    def on_end(m: Trainee, outcome) -> None:
        i = place[id(m)]
        statuses[i] = sinks[i].failed(outcome) if isinstance(outcome, Exception) else \
            sinks[i].finished(outcome, m.model, time.perf_counter() - t0)

    try:
        group.train_group(members, device, on_end)
    except KeyboardInterrupt:  # members still training are marked KILLED; their checkpoints resume them
        for m in members:
            if place[id(m)] not in statuses:
                sinks[place[id(m)]].killed()
        raise
    except Exception as e:  # noqa: BLE001 - recorded on every member still training; the batch goes on
        for m in members:
            if place[id(m)] not in statuses:
                statuses[place[id(m)]] = sinks[place[id(m)]].failed(e)
    return [statuses[i] for i in range(len(runs))]
