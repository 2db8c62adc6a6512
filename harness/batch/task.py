"""The task side of a batch on Ray: one run, lived as every run is (harness.batch.life), in the task's process.

The run trains on the CPU threads and the GPU share Ray granted the task (Ray sets CUDA_VISIBLE_DEVICES, so "cuda" is
the task's own GPU), and the task reports the node it ran on, so the driver's progress lines say where each run
went. Ray is imported here only inside the task, never at import: `run --jobs 1` and `run --offline` work where Ray
is not installed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from harness.batch.life import live
from harness.batch.options import BatchOptions
from harness.core.data import Arrays
from harness.core.spec import RunSpec
from harness.tracking.status import Status

_NOT_NAMES = {"CPU", "GPU", "memory", "object_store_memory"}


class Done(NamedTuple):
    status: Status
    node: str  # where it ran: the node's custom resources, else its address


def node_name(node: dict) -> str:
    """A node's name in progress lines: its custom resources (`ray start --resources`), which say what the
    cluster's owner named it, else its IP address."""
    custom = sorted(k for k in node.get("Resources", {}) if k not in _NOT_NAMES and not k.startswith(
        ("node:", "accelerator_type:")))
    return "+".join(custom) or node.get("NodeManagerAddress", "?")


def this_node() -> str:
    import ray

    me = ray.get_runtime_context().get_node_id()
    return next((node_name(n) for n in ray.nodes() if n["NodeID"] == me), me[:8])


def run_task(arrays: Arrays, run: RunSpec, device: str, threads: int, o: BatchOptions) -> Done:
    """The body of the Ray task; `o` travels with it, so the task's process writes where the driver says. A Ctrl-C
    on the driver cancels it with a KeyboardInterrupt, which the run's sink (harness.tracking.sinks) turns into a
    KILLED run before the task ends."""
    torch.set_num_threads(threads)
    # Ray hands arrays out read-only from its object store; a tensor made from them would share read-only memory
    arrays = replace(arrays, **{k: np.array(getattr(arrays, k)) for k in ("x_train", "y_train", "x_test", "y_test")})
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    node = this_node()
    dest = replace(o.destination.without_bars(), places=replace(o.places, node=node))  # claims name their node
    print(f"{run.run_name}: on Ray node {node}", flush=True)
    (status,) = live([run], arrays, dev, dest)
    return Done(status, node)


def sees(path: str) -> bool:
    """Whether this node sees `path` (a file the driver wrote into the shared checkpoint folder)."""
    return Path(path).is_file()
