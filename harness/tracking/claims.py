"""Run claims: one writer per run and per checkpoint, across processes, drivers and cluster nodes.

Before a run trains it is claimed under its spec_hash; the claim is held for the whole run, its heartbeat renewed
in a thread, and released at the end. A second driver, a retried Ray task or another node that asks for the same
run waits; once the holder releases, it finds the run FINISHED in MLflow and skips it. A holder that died (its
heartbeat older than HARNESS_CLAIM_TIMEOUT seconds, default 120, or on this host a process that has exited) is
taken over and the run resumed from its checkpoint, as a killed run always is.

Why a table in the store's SQL database: MLflow has no compare-and-set (two `search_runs` then `create_run` race,
which is how two drivers both trained one run), but an SQL database has one. An INSERT of a primary key succeeds
for exactly one writer, and taking over a stale claim is an UPDATE whose WHERE names the old holder and heartbeat,
so of two takers exactly one sees a row changed. The database is the one the runs are recorded in already: the
SQLite file of a `sqlite:///` store (its own lock serialises the writers of one machine), the database of a
`postgresql://` store, or for an `http://` store (an `mlflow server`) the server's backend database, given by
--claims-db or HARNESS_CLAIMS_DB since the REST API does not tell it. SQLAlchemy comes with MLflow. A lock file with
O_EXCL in the checkpoint folder was the other choice; it was not taken because O_EXCL and mtimes are unreliable on
the network file systems a cluster shares checkpoints over, where a database server is not.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import sqlalchemy as sa

from harness.errors import UserError
from harness.tracking import store as tracking

TABLE = "harness_run_claims"


def timeout_s() -> float:
    """Seconds without a heartbeat after which a claim's holder counts as dead."""
    return float(os.environ.get("HARNESS_CLAIM_TIMEOUT", "120"))


@dataclass(frozen=True)
class Places:
    """Where every process of a batch finds the same state, handed to each run (and each Ray task) as a value: the
    checkpoint folder and the claim database (None: beside the store), and the Ray node a run is on ("" off Ray),
    which its claims name."""

    checkpoint_dir: Path | None = None
    claims_db: str | None = None
    node: str = ""

    def checkpoints(self) -> Path:
        """On a cluster every node must reach it: a run resumes on whichever node Ray retries it."""
        return self.checkpoint_dir or tracking.store_root() / "checkpoints"

    def claims_url(self, uri: str | None = None) -> str:
        """The SQLAlchemy URL of the claim table's database, for the tracking store `uri`."""
        uri = uri or tracking.tracking_uri()
        if self.claims_db:
            return self.claims_db
        if uri.startswith(("sqlite:", "postgresql", "mysql")):
            return uri
        raise UserError(f"MLFLOW_TRACKING_URI {uri}: expected --claims-db URL (or HARNESS_CLAIMS_DB), the database "
                        "behind this tracking server, e.g. postgresql://user@host/mlflow, where runs are claimed")


BESIDE_THE_STORE = Places()


@cache
def _table(url: str):
    if db := tracking.sqlite_file(url):
        db.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60} if url.startswith("sqlite") else {},
                              pool_pre_ping=True)
    meta = sa.MetaData()
    table = sa.Table(TABLE, meta, sa.Column("spec_hash", sa.String(64), primary_key=True),
                     sa.Column("holder", sa.String(200), nullable=False),
                     sa.Column("heartbeat", sa.Float, nullable=False))
    try:
        meta.create_all(engine)
    except sa.exc.SQLAlchemyError:  # another process created it between the check and the CREATE
        meta.create_all(engine)
    return engine, table


def _try_take(url: str, spec_hash: str, holder: str) -> str | None:
    """Claims `spec_hash` for `holder`: None when taken, else the live holder's name."""

    engine, t = _table(url)
    now = time.time()
    try:
        with engine.begin() as con:
            con.execute(t.insert().values(spec_hash=spec_hash, holder=holder, heartbeat=now))
        return None
    except sa.exc.IntegrityError:
        pass
    with engine.begin() as con:
        row = con.execute(sa.select(t.c.holder, t.c.heartbeat).where(t.c.spec_hash == spec_hash)).first()
        if row is None:  # released in between: try again
            return "(released)"
        if now - row.heartbeat < timeout_s() and not _gone(row.holder):
            return row.holder
        stale = t.update().where(t.c.spec_hash == spec_hash, t.c.holder == row.holder,
                                 t.c.heartbeat == row.heartbeat).values(holder=holder, heartbeat=now)
        return None if con.execute(stale).rowcount == 1 else row.holder


def _gone(holder: str) -> bool:
    """A holder on this host whose process has exited: taken over at once rather than after the timeout."""
    host, pid, _ = holder.rsplit(":", 2)
    if host.rsplit("/", 1)[-1] != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _beat(url: str, spec_hash: str, holder: str, stop: threading.Event) -> None:
    engine, t = _table(url)
    while not stop.wait(max(timeout_s() / 4, 0.2)):
        try:
            with engine.begin() as con:
                con.execute(t.update().where(t.c.spec_hash == spec_hash, t.c.holder == holder)
                            .values(heartbeat=time.time()))
        except Exception:  # noqa: BLE001 - a missed beat is retried; only timeout_s of them lose the claim
            pass


@contextmanager
def claimed(spec_hash: str, name: str, log=print, places: Places = BESIDE_THE_STORE):
    """Hold the claim on `spec_hash` for the duration of the block, waiting while a live holder has it."""

    url = places.claims_url()
    where = f"{places.node}/" if places.node else ""
    holder = f"{where}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    said = False
    while (other := _try_take(url, spec_hash, holder)) is not None:
        if not said and other != "(released)":
            log(f"{name}: claimed by {other}; waiting (a holder silent for {timeout_s():g}s is taken over)")
            said = True
        time.sleep(min(1.0, timeout_s() / 4))
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(url, spec_hash, holder, stop), daemon=True)
    beat.start()
    try:
        yield holder
    finally:
        stop.set()
        beat.join()
        engine, t = _table(url)
        with engine.begin() as con:
            con.execute(sa.delete(t).where(t.c.spec_hash == spec_hash, t.c.holder == holder))
