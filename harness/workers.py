"""The worker side of a batch: what each spawned process of `run --jobs N` / `table --jobs N` does.

A spawned worker imports this module while the parent waits to hand the next worker its copy of the arrays, so the
workers of a batch start this module's import time apart. It is kept light on purpose: the runner (MLflow, the
training loop, matplotlib) is imported on a worker's first run, when all workers import it side by side.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import torch
from tqdm import tqdm

from harness.data import Arrays
from harness.spec import RunSpec

_worker: dict = {}


def execute_one(run: RunSpec, arrays: Arrays, device: torch.device, force: bool, offline: str | None,
                progress: bool) -> str:
    """Into MLflow, or without it into `offline`/<spec_hash>/ (`run --offline`)."""
    from harness.runner import execute as into_mlflow
    from harness.runner import execute_offline

    if offline:
        return execute_offline(run, arrays, device, Path(offline), force=force, progress=progress)
    return into_mlflow(run, arrays, device, force=force, progress=progress)


def start(arrays: Arrays, devices, threads: int, offline: str | None) -> None:
    """`devices` is a queue holding one device per worker: each worker takes its own as it starts."""
    torch.set_num_threads(threads)
    # Bars are off in workers; tqdm would still make a multiprocessing lock, which a worker leaving by os._exit on
    # Ctrl-C never unlinks ("leaked semaphore objects" warning). A thread lock serves a process without bars.
    tqdm.set_lock(threading.RLock())
    device = torch.device(devices.get())
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels, graphs and caches of this process go to its GPU
    _worker.update(arrays=arrays, device=device, offline=offline, busy=False)
    signal.signal(signal.SIGINT, _on_ctrl_c)


def _on_ctrl_c(signum, frame) -> None:
    """A training worker marks its run KILLED on the way out; an idle one has nothing to mark and leaves quietly
    (a KeyboardInterrupt in multiprocessing's queue wait prints a traceback that reads like a failure)."""
    if _worker.get("busy"):
        raise KeyboardInterrupt
    os._exit(130)


def execute(run: RunSpec, force: bool) -> str:
    w = _worker
    w["busy"] = True
    try:
        return execute_one(run, w["arrays"], w["device"], force, w["offline"], progress=False)
    except KeyboardInterrupt:  # the run is marked KILLED by now; leave at once rather than take a queued run
        sys.stderr.flush()
        os._exit(130)
    finally:
        w["busy"] = False
