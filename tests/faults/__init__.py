"""Fault injection for the tests that SIGKILL a run and resume it: see sitecustomize.py beside this file."""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def killed_after(iteration: int) -> dict[str, str]:
    """The environment variables that make every `python -m harness` process started with them (and the workers
    it spawns, which inherit them) SIGKILL itself once a run has done `iteration` iterations. This folder goes
    first on PYTHONPATH, so that Python imports its sitecustomize.py at start-up; a PYTHONPATH already set is kept
    after it."""
    path = [str(FOLDER), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path), "HARNESS_FAULT_KILL_AT": str(iteration)}
