"""One resolved run, end to end: claim it, find or create its record (harness.tracking.sinks), train or resume it,
record the outcome, into MLflow or under --offline into a folder (the GPU machine has no MLflow).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from harness.batch.options import BatchOptions
from harness.core.data import Arrays, to_device
from harness.core.spec import RunSpec
from harness.core.train import param_dtype, train
from harness.tracking import claims
from harness.tracking.sinks import Sink, log, open_sink
from harness.tracking.status import Status


def execute(run: RunSpec, arrays: Arrays, device: torch.device, o: BatchOptions) -> Status:
    """FINISHED, SKIPPED, DIVERGED or FAILED. A run into MLflow is claimed first (harness.tracking.claims): one
    writer per run and checkpoint, whatever else is running it; an offline run's folder is this machine's own."""
    sink = open_sink(run, arrays, device, o.destination)
    held = nullcontext() if o.offline else claims.claimed(sink.spec_hash, run.run_name, log, o.places)
    with held:
        return _train_into(sink, run, arrays, device, o.progress)


def _train_into(sink: Sink, run: RunSpec, arrays: Arrays, device: torch.device, progress: bool) -> Status:
    if settled := sink.settled():
        return settled
    data = to_device(arrays, run.spec.data, device, param_dtype(run.spec))  # only for runs that train
    sink.open(data)
    t0 = time.perf_counter()
    try:
        final, model = train(run, data, device, checkpoint=sink.checkpoint, on_eval=sink.on_eval, progress=progress,
                             on_restart=sink.on_restart)
    except KeyboardInterrupt:
        sink.killed()
        raise
    except Exception as e:  # noqa: BLE001 - recorded on the run; the batch goes on
        return sink.failed(e)
    return sink.finished(final, model, time.perf_counter() - t0)
