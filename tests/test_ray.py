"""Claims and Ray, for real: two drivers on one SQLite store, and a two-node Ray cluster on loopback with an mlflow
server on PostgreSQL and a shared checkpoint folder, whose worker node is killed mid-run."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.cli import main
from harness.tracking.experiments import group_experiments

from .helpers import ROOT, TINY

FINAL_KEYS = ("test_error", "test_loss", "val_error", "val_loss", "train_loss", "train_error")
PY = sys.executable
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="session")
def ray_env(env_with):
    """The environment of the processes these tests start: this checkout importable, Ray's usage stats off."""
    return lambda **extra: env_with(PYTHONPATH=ROOT, RAY_USAGE_STATS_ENABLED=0, OMP_NUM_THREADS=1, **extra)


def _runs(c, group="t"):
    ids = group_experiments(c, group)
    return c.search_runs(ids) if ids else []


def _final(c, run):
    return {k: c.get_run(run.info.run_id).data.metrics[k] for k in FINAL_KEYS}


def _steps_once(c, run) -> bool:
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_error")]
    return len(steps) == len(set(steps)) > 0


@pytest.mark.slow
def test_two_drivers_on_one_spec_train_each_run_once(store, mini_quarter, tmp_path, write_spec, ray_env):
    """Two `harness run` of the same spec and seeds at once: every run is claimed before it trains, so the driver
    that comes second waits on the claim and then finds the run FINISHED."""
    spec = write_spec(tmp_path / "experiments" / "t", "tiny", TINY.replace("seeds: [0]", "seeds: [0, 1]")
                      .replace("total_iters: 12", "total_iters: 16"))
    from harness.tracking import store as tracking

    tracking.create_store()  # as `run --jobs` does; two fresh processes racing to create MLflow's tables is not this
    cmd = [PY, "-m", "harness", "run", str(spec), "--data", str(mini_quarter), "--no-progress"]
    drivers = [subprocess.Popen(cmd, env=ray_env(), cwd=tmp_path, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        errs = [p.communicate(timeout=150)[1] for p in drivers]
    finally:
        for p in drivers:
            p.kill()
    assert [p.returncode for p in drivers] == [0, 0], errs
    both = "".join(errs)
    assert both.count(": FINISHED in") == 2 and both.count("already FINISHED") == 2, both
    c = MlflowClient()
    runs = _runs(c)
    assert sorted(r.info.run_name for r in runs) == ["tiny-s0", "tiny-s1"], both
    assert all(r.info.status == "FINISHED" and _steps_once(c, r) for r in runs), both


def test_a_claim_waits_for_a_live_holder_and_takes_over_a_dead_one(store, monkeypatch):
    from harness.tracking import claims

    monkeypatch.setenv("HARNESS_CLAIM_TIMEOUT", "1")
    url = claims.Places().claims_url()
    assert claims._try_take(url, "h", "elsewhere:1:a") is None  # a holder on another host that will never beat
    assert claims._try_take(url, "h", "here:2:b") == "elsewhere:1:a"
    time.sleep(1.2)
    assert claims._try_take(url, "h", "here:2:b") is None  # silent past the timeout: taken over
    with claims.claimed("g", "run-g") as me:  # held, with a heartbeat
        time.sleep(1.5)
        assert claims._try_take(url, "g", "other:3:c") == me
    assert claims._try_take(url, "g", "other:3:c") is None  # released


def test_a_cluster_refuses_a_store_only_one_node_can_see(store, mini, tmp_path, capsys, write_spec):
    spec = write_spec(tmp_path / "experiments" / "t", "tiny")
    assert main(["run", str(spec), "--data", str(mini), "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a local store" in err[0] and "postgresql://" in err[0], err
    assert not store.exists()  # nothing ran, nothing created


def test_embedded_ray_listens_on_loopback_only(ray_env):
    """`--jobs N` starts Ray on this machine: every port its processes open (GCS, raylet, the driver, a worker)
    listens on loopback, so a batch on one machine opens nothing to the network (Ray's default is every interface)."""
    p = subprocess.run([PY, "-c", LISTENERS], env=ray_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    found = [line.rsplit(" ", 1) for line in p.stdout.splitlines()]
    assert {"gcs_server", "raylet"} <= {name for name, _ in found}, p.stdout  # the check sees Ray's servers
    outside = [(name, ip) for name, ip in found if not _loopback(ip)]
    assert not outside, p.stdout


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def test_jobs_without_ray_installed_is_one_line(store, mini, tmp_path, capsys, monkeypatch, write_spec):
    monkeypatch.setitem(sys.modules, "ray", None)  # the fault: Ray missing
    spec = write_spec(tmp_path / "experiments" / "t", "tiny")
    assert main(["run", str(spec), "--data", str(mini), "--jobs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not installed" in err[0], err


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (Ray's workers start sessions of their own, so a group kill misses them)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def _kill_tree(p: subprocess.Popen) -> None:
    for pid in _descendants(p.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait(timeout=30)


@pytest.fixture()
def netns():
    """A network namespace holding only `lo`, kept open by a sleeping process (stopped by its pid): Ray's nodes
    listen on every interface whatever --node-ip-address says, so the cluster lives where `lo` is all there is."""
    try:
        holder = subprocess.Popen(["unshare", "-n", "--", "sh", "-c", "ip link set lo up && exec sleep 900"])
    except OSError as e:
        pytest.skip(f"unshare: {e}")
    time.sleep(0.5)
    if holder.poll() is not None:
        pytest.skip("no network namespace here (unshare -n needs root or user namespaces)")
    try:
        yield ["nsenter", "-t", str(holder.pid), "-n", "--"]
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture()
def net_prefix(netns) -> list[str]:
    return netns


def _wait_log(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.5)


@pytest.fixture()
def mlflow_server(postgres_db, netns, tmp_path, free_port, ray_env):
    """`mlflow server` behind MLflow's basic-auth app, on PostgreSQL (password from PGPASSFILE), on loopback, its
    artifacts in a folder every (loopback) node reaches; yields its URL, the database URL and the login's env."""
    port = free_port()
    path = tmp_path / "mlflow-server.log"
    login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(16)}
    conf = tmp_path / "basic_auth.ini"
    conf.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp_path}/auth.db\n"
                    "admin_username = admin\nauth_cache_ttl_seconds = 3600\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    p = subprocess.Popen(netns + [PY, "-m", "mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri",
                                  postgres_db, "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--host",
                                  "127.0.0.1", "--port", str(port), "--workers", "1"],
                         env=ray_env(MLFLOW_AUTH_CONFIG_PATH=conf, MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
                                  MLFLOW_AUTH_ADMIN_PASSWORD=login["MLFLOW_TRACKING_PASSWORD"]),
                         stdout=path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_log(path, "Application startup complete", p, timeout=240)
        uri = f"http://127.0.0.1:{port}"
        # the login's first check (PBKDF2) takes seconds on a busy CPU; cached, the driver's 5 s check of the store
        # and every later request skip it
        subprocess.run(netns + [PY, "-c", LOGGED_IN, uri], env=ray_env(**login), check=True, timeout=300)
        yield uri, postgres_db, login
    finally:
        _kill_tree(p)


def _ray_node(netns: list[str], tmp_path: Path, temp: str, name: str, head_port: int, head: bool, ray_env,
              free_port, token: Path):
    args = netns + [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
            "--resources", json.dumps({name: 1}), "--object-store-memory", str(200 << 20)]
    for port in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                 "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port"):
        args += [port, str(free_port())]  # two nodes on one host: no default port may be shared
    if head:
        args += ["--head", "--port", str(head_port), "--include-dashboard", "false", "--disable-usage-stats",
                 "--temp-dir", temp]
    else:
        args += ["--address", f"127.0.0.1:{head_port}"]
    log = (tmp_path / f"ray-{name}.log").open("w")
    return subprocess.Popen(args, env=ray_env(**_ray_auth(token)), stdout=log, stderr=log, start_new_session=True)


def _ray_auth(token: Path) -> dict[str, str]:
    """Ray's token authentication, as every node and the driver have it (docs/cluster.md)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


@pytest.fixture()
def ray_cluster(netns, tmp_path, free_port, ray_env):
    """A head node (custom resource `head`) and a worker node (`worker`), one CPU each, on 127.0.0.1, with token
    authentication on (the token in a file only its owner reads)."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="hr-")  # Ray's socket paths must stay under 108 bytes
    token = tmp_path / "ray-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    nodes = {"head": _ray_node(netns, tmp_path, temp, "head", port, True, ray_env, free_port, token)}
    try:
        _wait_log(tmp_path / "ray-head.log", "block forever", nodes["head"])  # a worker gives a head 30 s, no more
        nodes["worker"] = _ray_node(netns, tmp_path, temp, "worker", port, False, ray_env, free_port, token)
        yield f"127.0.0.1:{port}", nodes, token
    finally:
        for p in reversed(nodes.values()):
            _kill_tree(p)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_table_spreads_over_two_nodes_and_a_dead_node_loses_no_run(mlflow_server, ray_cluster, net_prefix,
                                                                       mini_quarter, tmp_path, monkeypatch, write_spec,
                                                                       ray_env, one_torch_thread):
    """`table --address`: one run lands on each node (one CPU each); the worker node is killed once its run has
    a checkpoint, Ray retries the task on the head, which takes over the run's claim (its holder is gone) and
    resumes it from the shared checkpoint to the numbers of an uninterrupted run on one thread."""
    uri, pg, login = mlflow_server
    address, nodes, token = ray_cluster
    netns = net_prefix
    spec = write_spec(tmp_path / "experiments" / "t", "tiny", TINY.replace("seeds: [0]", "seeds: [0, 1]")
                      .replace("total_iters: 12", "total_iters: 120").replace("milestones: [8, 10]",
                                                                              "milestones: [90, 108]"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/ref/mlflow.db")
    monkeypatch.chdir(tmp_path)  # `run` exports its records under ./results: here, not into the checkout
    assert main(["run", str(spec), "--data", str(mini_quarter), "--no-progress"]) == 0
    ref = MlflowClient()
    reference = {r.info.run_name: _final(ref, r) for r in _runs(ref)}

    shared = tmp_path / "shared-checkpoints"
    p = subprocess.Popen(netns + [PY, "-m", "harness", "table", str(spec.parent), "--data", str(mini_quarter),
                                  "--no-report", "--no-progress", "--address", address, "--checkpoint-dir",
                                  str(shared), "--claims-db", pg],
                         env=ray_env(MLFLOW_TRACKING_URI=uri, HARNESS_CLAIM_TIMEOUT=30, **_ray_auth(token), **login),
                         cwd=tmp_path, stderr=(tmp_path / "driver.log").open("w"), start_new_session=True)
    try:
        found = subprocess.run(netns + [PY, "-c", WORKER_CLAIM, pg], env=ray_env(), capture_output=True, text=True,
                               timeout=240)
        assert found.returncode == 0, (found.stderr[-2000:], p.poll())
        spec_hash = found.stdout.strip()  # the run the worker node holds, by its claim
        deadline = time.monotonic() + 240
        while not (shared / f"{spec_hash}.pt").exists():  # its first checkpoint
            assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
        _kill_tree(nodes["worker"])  # the node dies: raylet, its workers, all at once
        p.wait(timeout=300)
        err = (tmp_path / "driver.log").read_text()
        assert p.returncode == 0, err[-5000:]
    finally:
        _kill_tree(p)
    assert "finished on head" in err, err[-5000:]
    runs = json.loads(subprocess.run(netns + [PY, "-c", READ_RUNS, uri], env=ray_env(**login), capture_output=True,
                                     text=True, check=True).stdout)
    _outsiders_are_refused(netns, address, uri, pg, tmp_path, ray_env)
    assert set(runs) == set(reference) == {"tiny-s0", "tiny-s1"}, runs  # no run made twice
    for name, r in runs.items():  # steps_once: resumed from its checkpoint, not from the start
        assert r["status"] == "FINISHED" and r["device"].endswith("x1 threads") and r["steps_once"], (name, r)
        assert r["final"] == reference[name], name  # bit-exact after the resume on the other node
    assert not list(shared.glob("*.pt"))


def _outsiders_are_refused(netns: list[str], address: str, uri: str, pg: str, tmp_path: Path, ray_env) -> None:
    """A client without the Ray token, without the MLflow login, without the PostgreSQL password: each refused."""
    bare = {k: v for k, v in ray_env(HOME=tmp_path / "nobody").items()
            if not k.startswith(("RAY_AUTH", "MLFLOW_TRACKING_", "PGPASS"))}
    tries = {"ray": (OUTSIDER_RAY, "InvalidAuthToken"), "mlflow": (OUTSIDER_MLFLOW, "HTTP 401"),
             "postgresql": (OUTSIDER_PG, "no password supplied")}
    args = {"ray": address, "mlflow": uri, "postgresql": pg}
    env = {**bare, "RAY_AUTH_MODE": "disabled", "RAY_NUM_REDIS_GET_RETRIES": "1"}  # refused once is refused
    clients = {name: subprocess.Popen(netns + [PY, "-c", code, args[name]], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
               for name, (code, _) in tries.items()}  # all three at once: each spends its time importing its client
    for name, (_, refusal) in tries.items():
        p = clients[name]
        out = p.communicate(timeout=180)[0]
        print(f"{name} without credentials: exit {p.returncode}: {out.strip().splitlines()[-1][:300]}")
        assert p.returncode != 0 and refusal in out and "LET IN" not in out, (name, out[-3000:])


LISTENERS = """
import psutil, torch
from harness.batch import cluster
from harness.batch.options import LOCAL
cluster.embedded_token()
ray = cluster.import_ray()
cluster.start(ray, LOCAL, 2, torch.device("cpu"))
ray.get(ray.remote(lambda: 0).remote())  # a worker process listens too
me = psutil.Process()
for p in [me, *me.children(recursive=True)]:
    try:
        for c in p.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN:
                print(p.name(), c.laddr.ip)
    except psutil.Error:
        pass
ray.shutdown()
"""

LOGGED_IN = """
import sys
from harness.tracking.store import check_store
check_store(sys.argv[1], timeout=280)
"""

OUTSIDER_RAY = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
print("LET IN", ray.cluster_resources())
"""

OUTSIDER_MLFLOW = """
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=60)
    print("LET IN")
except urllib.error.HTTPError as e:
    sys.exit(f"HTTP {e.code}")
"""

OUTSIDER_PG = """
import sys, sqlalchemy as sa
with sa.create_engine(sys.argv[1]).connect() as con:
    print("LET IN", con.execute(sa.text("SELECT 1")).scalar())
"""

WORKER_CLAIM = """
import sys, time
import sqlalchemy as sa
engine = sa.create_engine(sys.argv[1])
while True:
    with engine.connect() as con:
        rows = con.execute(sa.text("SELECT spec_hash, holder FROM harness_run_claims")).fetchall() \\
            if sa.inspect(engine).has_table("harness_run_claims") else []
    hit = [h for h, who in rows if who.startswith("worker/")]
    if hit:
        print(hit[0])
        break
    time.sleep(0.3)
"""

READ_RUNS = f"""
import json, sys
from mlflow import MlflowClient
from harness.tracking.experiments import group_experiments
c = MlflowClient(sys.argv[1])
out = {{}}
for r in c.search_runs(group_experiments(c, "t")):
    steps = [m.step for m in c.get_metric_history(r.info.run_id, "val_error")]
    assert r.info.run_name not in out, "a run made twice"
    out[r.info.run_name] = dict(status=r.info.status, device=r.data.tags["device"],
                                steps_once=len(steps) == len(set(steps)) > 0,
                                final={{k: r.data.metrics[k] for k in {FINAL_KEYS!r}}})
print(json.dumps(out))
"""
