"""reports/tuning/<study>/: Optuna's figures of every study in the Optuna storage, written by `report --all` (and
so `make report`) only; `tune` puts the same figures on its study's parent MLflow run, so that trying a toy study
never rewrites the committed pages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend

from harness.tracking import store as tracking
from harness.tracking.figures import study_figures

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"  # tune's default (cli --storage)


def optuna_storage() -> str:
    return os.environ.get("HARNESS_OPTUNA_STORAGE", DEFAULT_STORAGE)


def committed_journals(root: Path) -> list[Path]:
    """The Optuna journal files a checkout commits under results/tuning/ (`make cpu-tune` keeps its study there,
    so that a fresh clone goes on with it and draws its figures)."""
    return sorted((root / "results" / "tuning").glob("*.journal"))


def write_tuning_figures(out: Path, url: str | None = None) -> list[Path]:
    """Each study's figures into `out`/tuning/<study>/; a storage file that is not there is left uncreated and
    the committed figures as they are (said in one line)."""

    url = url or optuna_storage()
    path = Path(url.removeprefix("journal:")) if url.startswith("journal:") else tracking.sqlite_file(url)
    if path is not None and not path.is_file():
        print(f"report: no Optuna storage at {path}; {out}/tuning/ left as it was", file=sys.stderr)
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("journal:"):
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    else:
        storage = url
    written = []
    for name in sorted(optuna.get_all_study_names(storage)):
        study = optuna.load_study(study_name=name, storage=storage)
        if drawn := study_figures(study, out / "tuning" / name):
            print(f"report: wrote {', '.join(map(str, drawn))} (study '{name}' in {url})", file=sys.stderr)
            written += drawn
    return written
