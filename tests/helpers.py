"""Constants the test modules share at collection time (parametrize lists, spec texts); behaviour is in conftest's
fixtures."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
model: {arch: resnet, depth: 8}
optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4}
schedule: {name: multistep, milestones: [8, 10], total_iters: 12}
data: {val_fraction: 0.1}
batch_size: 32
seeds: [0]
eval_points: 4
"""
