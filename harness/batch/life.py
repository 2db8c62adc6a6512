"""One life of a run, whoever schedules it: claimed, found or created, trained or resumed, recorded.

`run` and `table` (one at a time in this process, grouped, or as a Ray task) and `tune` (a trial) all hand their
runs to `live`. A run alone is a group of one: each run has its own sink (harness.tracking.sinks: an MLflow run, an
`--offline` folder, or an Optuna trial's MLflow child run), which decides whether it trains at all (`settled`), holds
its claim, and records how it ended; the runs that train are Trainees stepped together by
harness.core.grouped.train_group (a group of one steps as a run alone). A failure is recorded on its run and
handed back as a Status, so a batch survives one bad run; Ctrl-C marks the runs still training KILLED.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

import torch

from harness.core.data import Arrays, DeviceData, identify, to_device
from harness.core.grouped import train_group
from harness.core.spec import RunSpec, Spec
from harness.core.train import Trainee, param_dtype
from harness.tracking.sinks import Destination, Sink, log, open_sink
from harness.tracking.status import Status

DeviceCache = dict[tuple[str, str], DeviceData]  # (data section as JSON, dtype) -> its tensors on the device


def on_device(arrays: Arrays, spec: Spec, device: torch.device, cache: DeviceCache) -> DeviceData:
    """One copy on the device per distinct data section and dtype, shared by the runs (and trials) that use it."""
    key = (spec.data.model_dump_json(), spec.dtype)
    if key not in cache:
        cache[key] = to_device(arrays, spec.data, device, param_dtype(spec))
    return cache[key]


def live(runs: list[RunSpec], arrays: Arrays, device: torch.device, dest: Destination,
         cache: DeviceCache | None = None) -> list[Status]:
    """The status of each run, in order: FINISHED, SKIPPED (done before, or the same resolved spec earlier in
    `runs`), DIVERGED, FAILED, or PRUNED (a trial). Several runs train together in one step (they must share
    harness.core.grouped.group_key); `cache` keeps device data across calls (a tune worker's trials)."""
    where = f" (in a group of {len(runs)})" if len(runs) > 1 else ""
    alone = dest if len(runs) == 1 else dest.without_bars()  # the group's lines, not one bar per member
    sinks = [open_sink(r, identify(r, arrays), arrays, device, alone, where) for r in runs]
    keys = [s.spec_hash for s in sinks]
    twice = {i for i, k in enumerate(keys) if k in keys[:i]}  # the same resolved spec again: one run of it
    with ExitStack() as held:
        for i, s in enumerate(sinks):
            if i not in twice:
                held.enter_context(s.hold())  # one writer per run and checkpoint, whatever else is running it
        return _train(runs, sinks, arrays, device, twice, {} if cache is None else cache)


def _members(runs: list[RunSpec], sinks: list[Sink], arrays: Arrays, device: torch.device, statuses: dict,
             cache: DeviceCache) -> dict[int, Trainee]:
    """The runs that train (a settled one does not; one that cannot start is FAILED), by their place in `runs`."""
    members: dict[int, Trainee] = {}
    for i, (run, sink) in enumerate(zip(runs, sinks, strict=True)):
        if i in statuses:
            continue
        if settled := sink.settled():
            statuses[i] = settled
            continue
        try:
            data = on_device(arrays, run.spec, device, cache)
            sink.open(data)
            members[i] = Trainee(run, data, device, sink.checkpoint, sink.on_eval, progress=sink.bars,
                                 evaluate_test=sink.tests, on_restart=sink.on_restart)
        except Exception as e:  # noqa: BLE001 - recorded on the run; the others go on
            statuses[i] = sink.failed(e)
    return members


def _train(runs: list[RunSpec], sinks: list[Sink], arrays: Arrays, device: torch.device, twice: set[int],
           cache: DeviceCache) -> list[Status]:
    statuses: dict[int, Status] = dict.fromkeys(twice, Status.SKIPPED)
    members = _members(runs, sinks, arrays, device, statuses, cache)
    if len(members) > 1:
        log(f"group: {len(members)} run(s) trained together on {device}: "
            + ", ".join(m.run.run_name for m in members.values()))
    place = {id(m): i for i, m in members.items()}
    t0 = time.perf_counter()

    def on_end(m: Trainee, outcome) -> None:
        i = place[id(m)]
        statuses[i] = sinks[i].failed(outcome) if isinstance(outcome, Exception) else \
            sinks[i].finished(outcome, m.model, time.perf_counter() - t0)

    try:
        train_group(list(members.values()), device, on_end)
    except KeyboardInterrupt:  # the runs still training are KILLED; their checkpoints resume them
        for i in members.keys() - statuses.keys():
            sinks[i].killed()
        raise
    except Exception as e:  # noqa: BLE001 - recorded on every run still training; the batch goes on
        for i in members.keys() - statuses.keys():
            statuses[i] = sinks[i].failed(e)
    return [statuses[i] for i in range(len(runs))]
