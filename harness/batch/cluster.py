"""Several runs at once, on Ray: this machine (`--jobs N`, Ray started embedded) or a cluster (`--address`).

Ray places each run (a task, harness.batch.task) where its declared resources are free: `num_cpus`
(the CPU threads the run trains on) and `num_gpus` (a fraction packs several runs on one GPU). Ray also retries a
task whose worker or node died (`max_retries`, HARNESS_RAY_MAX_RETRIES, default 3) and cancels what is queued on
Ctrl-C; the run then resumes from its checkpoint, claimed anew (harness.tracking.claims). On a cluster every node must
reach the same store, claim database and checkpoint folder; each is checked before anything runs, so that a run
never trains into a place only one node can see.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import sys
import uuid
from pathlib import Path

import torch

from harness.batch import task as workers
from harness.batch.options import BatchOptions, Cluster
from harness.core.data import Arrays
from harness.core.devices import thread_share
from harness.core.spec import RunSpec
from harness.errors import UserError
from harness.tracking import store as tracking
from harness.tracking.status import Status

LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
ENV = ("MLFLOW_TRACKING_URI", "HARNESS_CLAIM_TIMEOUT", "HARNESS_GIT_COMMIT", "MLFLOW_TRACKING_USERNAME",
       "MLFLOW_TRACKING_PASSWORD", "PGPASSFILE")
# set by a user, what a task needs to reach the store and the claims: the mlflow server's basic-auth login and where
# PostgreSQL's password file is (never the password on a command line); only holders of the Ray token read a task's
# environment. Where checkpoints and claims are travels with each task as its BatchOptions.


def import_ray():
    """Ray, with its settings made before the import that reads them."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # a cancelled run is reported once, by _collect
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # every run's evaluation lines, not "[repeated 2x across cluster]"
    try:
        import ray
    except ImportError:
        raise UserError("--jobs above 1 and --address run on Ray, which is not installed here "
                        "(pip install 'ray>=2.60', or --jobs 1)") from None
    return ray


def embedded_token() -> None:
    """Embedded Ray with token authentication: a fresh 256-bit token in this process's environment (inherited by
    the Ray processes it starts, written to no file), so that a port Ray opens lets in only this command's own."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    from ray._raylet import Config

    Config.initialize("")  # Ray read its config at import; ray's own token switch re-reads it so, too


def check_shared(o: BatchOptions) -> None:
    """On a cluster: refuse a store or claim database that only this node can open, and a Ray cluster joined
    without token authentication (anyone who reaches a Ray port runs code on it), before Ray starts."""
    local = "only this node can open it; on a cluster use an `mlflow server --backend-store-uri postgresql://...` " \
            "that every node reaches (MLFLOW_TRACKING_URI=http://HOST:PORT) and --claims-db postgresql://..."
    uri = tracking.tracking_uri()
    if not o.offline and (tracking.sqlite_file(uri) or "://" not in uri or uri.startswith("file:")):
        raise UserError(f"--address: MLFLOW_TRACKING_URI {uri} is a local store: {local}")
    if not o.offline and (db := o.places.claims_url(uri)).startswith("sqlite:"):
        raise UserError(f"--address: --claims-db {db} is a local SQLite file: {local}")
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if mode.lower() != "token":
        raise UserError(f"--address: RAY_AUTH_MODE is {mode or 'unset'}: expected RAY_AUTH_MODE=token with the "
                        "cluster's token in RAY_AUTH_TOKEN_PATH (or ~/.ray/auth_token) on every node and here "
                        "(docs/cluster.md); without it anyone who reaches a Ray port runs code on the cluster")


def check_reached(ray, folder: Path) -> None:
    """Every node sees a file this driver writes into `folder` (the checkpoint folder), or one line says which
    does not: a run retried on another node must find its checkpoint there."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".reach-{uuid.uuid4().hex}"
    probe.write_text("")
    try:
        sees = ray.remote(num_cpus=0)(workers.sees)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        seen = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(probe)) for n in nodes])
    finally:
        probe.unlink(missing_ok=True)
    blind = [workers.node_name(n) for n, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise UserError(f"--checkpoint-dir {folder}: not reached from Ray node(s) {', '.join(blind)}; expected a "
                        "folder every node mounts at the same path (e.g. NFS)")


@contextlib.contextmanager
def on_loopback():
    """Embedded Ray on loopback only: a batch on one machine opens no port to the network. Ray turns the node address
    127.0.0.1 into the host's own address, and its GCS, raylet and workers then listen on every interface, unless its
    switch for a machine that is no cluster (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) is off while it starts; the processes
    it starts keep their copy of it, and a later `--address` batch in this process gets Ray's default back."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # Ray read the variable at its import, which may have come first
    try:
        with tracking.environ(**{LOOPBACK_SWITCH: "0"}):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def start(ray, cluster: Cluster, jobs: int, device: torch.device) -> tuple[int, float, str]:
    """Start Ray embedded or join `cluster.address`; returns each unit's CPU threads, GPU share and device."""
    env = {k: os.environ[k] for k in ENV if os.environ.get(k)}
    env.setdefault("HARNESS_GIT_COMMIT", tracking.git_commit())  # a node's copy of the code may have no .git
    gpus = torch.cuda.device_count() if device.type == "cuda" and device.index is None else 0
    threads = cluster.cpus_per_run or (1 if cluster.address else thread_share(jobs))
    share = cluster.gpus_per_run if cluster.gpus_per_run is not None else \
        (1 / math.ceil(jobs / gpus) if gpus else 0.0)
    common = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True,
                  runtime_env={"env_vars": env})
    if cluster.address:
        ray.init(address=cluster.address, **common)
    else:
        with on_loopback():
            ray.init(num_cpus=threads * jobs, num_gpus=gpus, _node_ip_address="127.0.0.1", **common)
    return threads, share, "cuda" if share else str(device)


def describe(ray, cluster: Cluster, jobs: int, threads: int, share: float, device: str) -> str:
    """The line that says where the batch runs; on one machine the same as before Ray."""
    if not cluster.address:
        where = f"on {device}" + (f", {share:g} GPU each" if share else "")
        return f"jobs: {jobs} runs at a time {where}" + (f", {threads} CPU thread(s) each" if device == "cpu" else "")
    nodes = [workers.node_name(n) for n in ray.nodes() if n["Alive"]]
    total = ray.cluster_resources()
    return (f"ray: cluster at {cluster.address}, {len(nodes)} node(s) ({', '.join(nodes)}), {total.get('CPU', 0):g} "
            f"CPUs, {total.get('GPU', 0):g} GPUs; each run takes {threads} CPU(s) and {share:g} GPU(s)")


def run_tasks(runs: list[RunSpec], arrays: Arrays, device: torch.device, o: BatchOptions, on_done) -> None:
    """Submit every run, call `on_done(run, status, node)` as each ends; Ctrl-C cancels what is queued,
    interrupts what is running (its runs are marked KILLED) and raises KeyboardInterrupt."""
    if not o.cluster.address:
        embedded_token()
    ray = import_ray()
    threads, share, dev = start(ray, o.cluster, o.jobs, device)
    try:
        if o.cluster.address:
            check_reached(ray, o.offline or o.places.checkpoints())
        print(describe(ray, o.cluster, o.jobs, threads, share, dev), file=sys.stderr, flush=True)
        retries = int(os.environ.get("HARNESS_RAY_MAX_RETRIES", "3"))
        task = ray.remote(workers.run_task).options(num_cpus=threads, num_gpus=share, max_retries=retries)
        data = ray.put(arrays)
        refs = {task.remote(data, run, dev, threads, o): run for run in runs}
        _collect(ray, refs, on_done)
    finally:
        ray.shutdown()


def _collect(ray, refs: dict, on_done) -> None:
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                done = ray.get(ready[0])
                on_done(refs[ready[0]], done.status, done.node)
            except ray.exceptions.RayError as e:  # e.g. retries spent on dead nodes: the runs resume later
                on_done(refs[ready[0]], Status.FAILED, f"nowhere ({_why(e)})")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)  # queued: never start; running: a KeyboardInterrupt marks the run KILLED
        ray.wait(pending, num_returns=len(pending), timeout=30)
        raise


def _why(e: Exception) -> str:
    """What failed, in one line: a task's own exception (a RayTaskError's first line is only Ray's header naming the
    task), or Ray's error where the task never ran (a dead node, a dead worker)."""
    cause = getattr(e, "cause", None) or e
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}{' in the task' if cause is not e else ''}: {lines[0][:300]}"
