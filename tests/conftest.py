"""Shared fixtures: the real mini CIFAR-10 from ../shared and a throw-away MLflow store per test."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from .helpers import ROOT, TINY

MINI = ROOT.parent / "shared" / "data" / "cifar10-mini.npz"


@pytest.fixture(scope="session", autouse=True)
def checkout_results_untouched():
    """No test writes into the checkout's committed run records (results/ is relative to the working directory:
    a test that runs `run` in-process works in its tmp_path)."""
    before = sorted((ROOT / "results").rglob("*.json"))
    yield
    added = sorted(set((ROOT / "results").rglob("*.json")) - set(before))
    assert not added, f"tests wrote run records into the checkout: {[str(a) for a in added]}"


@pytest.fixture(autouse=True)
def mlflow_store_of_this_test(monkeypatch):
    """Each test reaches the store its environment names. An in-process command calls `mlflow.set_tracking_uri`,
    which is global and also writes MLFLOW_TRACKING_URI into os.environ: without this, a later test's
    `MlflowClient()` would read the earlier test's store."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", None)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    utils._tracking_uri = None
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def mini() -> Path:
    assert MINI.is_file(), f"{MINI} is missing: tests need ../shared/data/cifar10-mini.npz beside the checkout"
    return MINI


@pytest.fixture(scope="session")
def mini_quarter(mini, tmp_path_factory) -> Path:
    """The first quarter of the mini (1,024 training images, 256 held out), real CIFAR-10 as it is, for tests whose
    subject is not the data: a tiny run spends ~85 % of its time evaluating its held-out images, so a quarter of
    them makes the float64 groups, the Ray clusters and the killed batches about three times cheaper."""
    import numpy as np

    path = tmp_path_factory.mktemp("data") / "cifar10-mini-quarter.npz"
    with np.load(mini) as z:
        np.savez(path, x_train=z["x_train"][:1024], y_train=z["y_train"][:1024], x_test=z["x_test"][:256],
                 y_test=z["y_test"][:256])
    return path


@pytest.fixture()
def store(tmp_path, monkeypatch) -> Path:
    """A fresh SQLite MLflow store under tmp_path; the test runs with tmp_path as its working directory."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path / "mlruns"


@pytest.fixture()
def one_torch_thread():
    """Torch on one CPU thread for the test's body: an in-process reference run then meets the numbers of a worker
    that trains on one thread (float32 sums differ in the last bits across thread counts)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_spec(folder: Path, name: str, text: str = TINY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def _env_with(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def write_spec():
    """write_spec(folder, name, text=TINY) -> the path of folder/name.yaml holding `text`."""
    return _write_spec


@pytest.fixture(scope="session")
def env_with():
    """env_with(**extra) -> this process's environment plus `extra`, for a subprocess."""
    return _env_with


@pytest.fixture(scope="session")
def free_port():
    """free_port() -> a free TCP port on loopback (the servers tests start listen on 127.0.0.1 only)."""
    return _free_port


@pytest.fixture()
def net_prefix() -> list[str]:
    """What servers a test starts are run under: nothing here; a module whose servers live in a network
    namespace of their own overrides it (tests/test_ray.py)."""
    return []


@pytest.fixture()
def postgres_db(net_prefix, free_port, monkeypatch):
    """A throw-away PostgreSQL server on loopback (Debian's packages; .ci/run installs them) that takes a password
    (scram-sha-256), one database `harness` in it; yields its SQLAlchemy URL, which holds no password: clients
    find it in the .pgpass file PGPASSFILE names (set for this test and its subprocesses). Stops the server
    (pg_ctl, by its data folder) even on failure."""
    import glob
    import secrets
    import shutil
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql; .ci/run does this)")
    bindir = Path(bins[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="harness-pg-"))  # pytest's tmp dirs are closed to other users
    secret = Path(tempfile.mkdtemp(prefix="harness-pgpw-"))
    as_pg = net_prefix + (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])  # not as root
    password = secrets.token_hex(16)
    (secret / "pw").write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        shutil.chown(secret, "postgres")
        shutil.chown(secret / "pw", "postgres")
    subprocess.run(as_pg + [str(bindir / "initdb"), "-D", str(data), "-A", "scram-sha-256", "-U", "postgres",
                            f"--pwfile={secret / 'pw'}"], check=True, capture_output=True)
    (secret / "pw").unlink()
    port = free_port()
    pgpass = secret / "pgpass"
    pgpass.write_text(f"127.0.0.1:{port}:*:postgres:{password}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                            f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True,
                   capture_output=True)
    try:
        subprocess.run(net_prefix + [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                     "harness"], check=True, capture_output=True, env=_env_with(PGPASSFILE=pgpass))
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/harness"
    finally:
        subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(secret, ignore_errors=True)
