"""One resolved run, end to end: claim it, find or create its record (harness.tracking.sinks), train or resume it,
record the outcome. `execute` records into MLflow, `execute_offline` into a folder (the GPU machine has no MLflow).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from harness.core.data import Arrays, to_device
from harness.core.spec import RunSpec
from harness.core.train import param_dtype, train
from harness.tracking import claims
from harness.tracking.sinks import ToFolder, ToMlflow, log


def execute(run: RunSpec, arrays: Arrays, device: torch.device, force: bool = False,
            progress: bool = True) -> str:
    """Returns 'finished', 'skipped', 'diverged' or 'failed'. The run is claimed first (harness/claims.py): one
    writer per run and checkpoint, whatever else is running it."""
    sink = ToMlflow(run, arrays, device, force, progress)
    with claims.claimed(sink.spec_hash, run.run_name, log):
        return _train_into(sink, run, arrays, device, progress)


def execute_offline(run: RunSpec, arrays: Arrays, device: torch.device, out: Path, force: bool = False,
                    progress: bool = True) -> str:
    """Train without MLflow into `out/<spec_hash>/` (harness.tracking.sinks.ToFolder); `import` logs it later."""
    return _train_into(ToFolder(run, arrays, device, out, force, progress), run, arrays, device, progress)


def _train_into(sink: ToMlflow | ToFolder, run: RunSpec, arrays: Arrays, device: torch.device, progress: bool) -> str:
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
