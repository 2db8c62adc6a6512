"""MLflow as the one record of every run: where the store is, how a run is found again, batched logging.

A run is identified by the `spec_hash` tag (resolved spec + seed + budget + data), so rerunning a spec
finds its run: FINISHED means skip, anything else means resume from the checkpoint. MLflow 3 refuses the
plain file store, so the default is SQLite with artifacts in a folder beside it.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import sqlalchemy
from mlflow import MlflowClient
from mlflow.entities import Metric

from harness.errors import UserError
from harness.tracking.inputs import NOTE, experiment_note

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


@contextlib.contextmanager
def environ(**values: str):
    """Environment variables set for one block, and each restored (or removed) after it: MLflow and Ray read some
    switches from the environment at each use, and a switch meant for one call must not outlive it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sqlite_file(uri: str | None = None) -> Path | None:
    """The SQLite file of a `sqlite:///PATH` store, else None."""
    uri = uri or tracking_uri()
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def store_root(uri: str | None = None) -> Path:
    """Folder for artifacts and checkpoints: beside the SQLite file, else ./mlruns."""
    uri = uri or tracking_uri()
    if db := sqlite_file(uri):
        return db.parent
    if urlparse(uri).scheme in ("", "file"):
        return Path(urlparse(uri).path or "mlruns")
    return Path("mlruns")


def client():
    """An MlflowClient on the project's store; creates the SQLite folder on first use."""

    uri = tracking_uri()
    store_root(uri).mkdir(parents=True, exist_ok=True)
    if (db := sqlite_file(uri)) is not None and not db.exists():  # making its tables takes a while: say so first
        print(f"mlflow: creating the store {db} (first use; `make ui` shows it)", file=sys.stderr, flush=True)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def create_store() -> None:
    """Create the store's tables before several processes open it: workers that open a fresh SQLite store at
    the same moment race to create them, and the loser's run fails with "table ... already exists"."""
    client().search_experiments(max_results=1)


KIND = "mlflow.experimentKind"  # MLflow 3's UI shows an experiment of this kind as model training, not GenAI
MODEL_TRAINING = "custom_model_development"


def experiment_id(c, name: str, note: str | None = None, tags: dict[str, str] | None = None,
                  folder: str | None = None) -> str:
    """The experiment `name`, made on first use with its description (`mlflow.note.content`: the group's own unless
    `note` says otherwise), its kind (model training) and `tags`; an experiment made before either existed gets
    them. Its artifacts go to artifacts/<folder or name>/ beside a local store."""
    note = experiment_note(name) if note is None else note
    wanted = {NOTE: note, KIND: MODEL_TRAINING, **(tags or {})}
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        for k, v in wanted.items():
            if k not in exp.tags:
                c.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    local = urlparse(tracking_uri()).scheme in ("", "file", "sqlite")  # a server keeps its own artifact root
    artifacts = (store_root() / "artifacts" / (folder or name)).resolve().as_uri() if local else None
    try:
        return c.create_experiment(name, artifact_location=artifacts, tags=wanted)
    except Exception:  # another worker created it first
        return c.get_experiment_by_name(name).experiment_id


def check_store(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail in seconds with one line when the store cannot be reached: MLflow's own HTTP retries take minutes
    before a long traceback. A tracking server is asked one REST call; a database is connected to once."""
    uri = uri or tracking_uri()
    scheme = urlparse(uri).scheme.split("+")[0]
    try:
        if scheme in ("http", "https"):
            _check_server(uri, timeout)
        elif scheme in ("sqlite", "postgresql", "mysql", "mssql"):
            _check_database(uri, scheme, timeout)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever failed, the user gets its name and the URI in one line
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise UserError(f"MLFLOW_TRACKING_URI={uri}: {type(e).__name__}: {reason[0] if reason else ''} (expected "
                        "a reachable MLflow tracking server or database)") from None


def _check_server(uri: str, timeout: float) -> None:
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    req = urllib.request.Request(uri.rstrip("/") + path)
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        req.add_header("Authorization", f"Bearer {token}")
    elif user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        basic = base64.b64encode(f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()).decode()
        req.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            pass
    except urllib.error.HTTPError as e:
        raise UserError(f"MLFLOW_TRACKING_URI={uri}: the server answered HTTP {e.code} {e.reason} to GET "
                        f"{path.split('?')[0]} (expected an MLflow tracking server)") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"MLFLOW_TRACKING_URI={uri}: no MLflow tracking server answers within {timeout:g}s "
                        f"({reason})") from None


def _check_database(uri: str, scheme: str, timeout: float) -> None:
    if scheme == "sqlite" and (db := sqlite_file(uri)) is not None and not db.exists():  # checking creates nothing
        near = next(p for p in (db.parent, *db.parent.parents) if p.exists())
        if not os.access(near, os.W_OK):
            raise UserError(f"MLFLOW_TRACKING_URI={uri}: {near} is not writable (expected a folder the SQLite store "
                            "can be created in)")
        return
    args = {"connect_timeout": int(timeout)} if scheme in ("postgresql", "mysql") else {}
    engine = sqlalchemy.create_engine(uri, connect_args=args)
    try:
        with engine.connect() as conn:
            sqlalchemy.inspect(conn).get_table_names()  # reads the schema: a file that is no database fails here
    finally:
        engine.dispose()


def find_run(c, exp_ids: list[str], spec_hash: str):
    """The newest run of this exact resolved spec in these experiments, or None."""
    if not exp_ids:
        return None
    runs = c.search_runs(exp_ids, filter_string=f"tags.spec_hash = '{spec_hash}'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def git_commit() -> str:
    """HEAD (with -dirty); HARNESS_GIT_COMMIT names it where the tree has no .git (the GPU machine's copy)."""
    if os.environ.get("HARNESS_GIT_COMMIT"):
        return os.environ["HARNESS_GIT_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def commits_in_history(commits: set[str]) -> set[str] | None:
    """Those of `commits` (git_commit tags, "-dirty" or not) that this checkout's history holds; None where there is
    no whole history to ask (no git, not a checkout, a shallow clone), so that nothing is flagged for want of one."""
    shas = sorted({c.removesuffix("-dirty") for c in commits if c and c != "unknown"})
    here = Path(__file__).parent
    try:
        shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], capture_output=True, text=True,
                                 check=True, cwd=here).stdout.strip()
        if shallow != "false":  # a shallow clone lacks old commits that the full history holds
            return None
        out = subprocess.run(["git", "cat-file", "--batch-check"], input="".join(f"{c}^{{commit}}\n" for c in shas),
                             capture_output=True, text=True, check=True, cwd=here).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = {sha for sha, line in zip(shas, out.splitlines(), strict=False) if not line.endswith(" missing")}
    return {c for c in commits if c.removesuffix("-dirty") in found}


def source_tags() -> dict[str, str]:
    """MLflow's own source tags, so its Source column links the commit the run's code came from."""
    commit = git_commit()
    try:
        full = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        full = commit.removesuffix("-dirty")
    return {"mlflow.source.type": "LOCAL", "mlflow.source.name": "python -m harness",
            "mlflow.source.git.commit": os.environ.get("HARNESS_GIT_COMMIT", full).removesuffix("-dirty"),
            "mlflow.user": user()}


def user() -> str:
    """Who ran it, as MLflow's fluent runs say (its "Created by" column): the login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user of that uid (a container's)
        return "unknown"


TIMING = ("images_per_s", "train_seconds", "mlflow_log_seconds", "model_log_seconds", "final_iteration",
          "wall_seconds_this_attempt")  # bookkeeping, not results
STORE_PREFIX = "system/"  # bookkeeping's name in MLflow
RECORD_PREFIX = "timing/"  # bookkeeping's name in a record (format 2), kept so that committed records stay as written


def metric_name(key: str) -> str:
    """A metric's name in MLflow: bookkeeping under `system/`, beside the system-metrics monitor's. MLflow 3's run
    page opens with a section per `prefix/` and puts the unprefixed metrics last, and shows `system/` metrics on its
    System metrics tab only, so there the Model metrics tab holds the results (test_error, val_error, train_loss,
    lr) alone and the bookkeeping stays in the runs table's columns and the System metrics tab."""
    return f"{STORE_PREFIX}{key}" if key in TIMING else key


def record_key(key: str) -> str:
    """A metric's name in a record: bookkeeping under `timing/`, as records have held it since format 2."""
    return f"{RECORD_PREFIX}{key}" if key in TIMING else key


def store_key(record_name: str) -> str:
    """A record's metric name as MLflow holds it (record_key's inverse composed with metric_name)."""
    return metric_name(record_name.removeprefix(RECORD_PREFIX))


def record_name(store_name: str) -> str | None:
    """An MLflow metric's name in a record; None for the monitor's `system/` metrics (the machine's load while it
    trained is the store's, not the record's)."""
    if store_name.startswith(STORE_PREFIX):
        bare = store_name.removeprefix(STORE_PREFIX)
        return record_key(bare) if bare in TIMING else None
    return store_name


def log_metrics(c, run_id: str, metrics: dict[str, float], step: int) -> float:
    """One round trip for all metrics of an evaluation point; returns the seconds it took."""

    t0 = time.perf_counter()
    ts = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(metric_name(k), float(v), ts, step) for k, v in metrics.items()])
    return time.perf_counter() - t0


def metric_history(c, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))
