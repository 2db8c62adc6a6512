"""Shared fixtures: the real mini CIFAR-10 from ../shared and a throw-away MLflow store per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT.parent / "shared" / "data" / "cifar10-mini.npz"


@pytest.fixture(scope="session")
def mini() -> Path:
    assert MINI.is_file(), f"{MINI} is missing: tests need ../shared/data/cifar10-mini.npz beside the checkout"
    return MINI


@pytest.fixture()
def store(tmp_path, monkeypatch) -> Path:
    """A fresh SQLite MLflow store under tmp_path; the test runs with tmp_path as its working directory."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path / "mlruns"


TINY = """\
model: {arch: resnet, depth: 8}
optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4}
schedule: {name: multistep, milestones: [8, 10], total_iters: 12}
data: {val_fraction: 0.1}
batch_size: 32
seeds: [0]
eval_points: 4
"""


def write_spec(folder: Path, name: str, text: str = TINY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def env_with(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env
