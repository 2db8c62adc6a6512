"""A batch's options, read once from the command line (cli.py) and handed down as one value: to the dispatcher,
to each run in this process, and with each Ray task to the process that trains it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.tracking.claims import BESIDE_THE_STORE, Places
from harness.tracking.sinks import Destination


@dataclass(frozen=True)
class Cluster:
    """Where a batch runs: `address` None is this machine alone."""

    address: str | None = None
    cpus_per_run: int | None = None  # default: this machine's threads split over --jobs
    gpus_per_run: float | None = None  # default: the GPUs split over --jobs, at most one each


LOCAL = Cluster()


@dataclass(frozen=True)
class BatchOptions:
    """How the runs of `run` and `table` train, and where they write."""

    data: str
    download: bool = False
    device: str | None = None  # None: cuda if PyTorch sees a GPU, else cpu
    force: bool = False  # start afresh even where a run of the spec exists
    offline: Path | None = None  # no MLflow: each run into offline/<spec_hash>/
    progress: bool = True  # bars; False: a line per evaluation point
    jobs: int = 1
    group: int | None = None  # None: what measured fastest on the device type
    cluster: Cluster = LOCAL
    places: Places = BESIDE_THE_STORE
    system_metrics: bool = True  # MLflow samples the machine while a run trains (system/... metrics)
    publish: Path | None = None  # results/: each run's record written there as soon as it finishes
    fastest: Path | None = None  # bench lines for this CPU's fastest path (harness.batch.fastest); None: as given

    @property
    def destination(self) -> Destination:
        """Where each run writes, as the one value its sink opens on (harness.tracking.sinks.open_sink)."""
        return Destination(self.offline, self.places, self.force, self.progress, self.system_metrics)
