import json
import subprocess
import sys

import pytest

from .conftest import ROOT


def test_bench_json_is_machine_readable(mini, tmp_path):
    p = subprocess.run([sys.executable, "-m", "harness", "bench", "--model", "resnet8", "--iters", "2", "--warmup", "1",
                        "--batch-size", "16", "--workers", "0", "--data", str(mini), "--json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r["device"].startswith("cpu") and r["model"] == "resnet8"
    for v in ("dataloader", "ours"):
        assert r["variants"][v]["images_per_s"] > 0 and r["variants"][v]["ms_per_iter"] > 0
    assert r["variants"]["dataloader"]["speedup_vs_dataloader"] == 1.0
    assert all(v["warmup_s"] >= 0 for v in r["variants"].values())
    assert r["loader_ms_per_batch"] > 0 and 0 < r["loader_pct_of_fastest_iter"] < 100  # augmentation is not the step
    assert r["transforms_cpu_ms_per_batch"] > 0
    assert 0 <= r["mlflow_overhead_pct"] < 100
    assert not (tmp_path / "mlruns").exists()  # the MLflow probe uses a throw-away store


def test_bench_rejects_unknown_model():
    p = subprocess.run([sys.executable, "-m", "harness", "bench", "--model", "vgg16"], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 2 and "--model: expected resnetN" in p.stderr


def test_bench_times_only_the_variants_asked_for_alone_and_as_jobs(mini, tmp_path):
    p = subprocess.run([sys.executable, "-m", "harness", "bench", "--model", "resnet8", "--iters", "2", "--warmup", "1",
                        "--batch-size", "16", "--data", str(mini), "--variants", "ours_channels_last", "--jobs", "2",
                        "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert list(r["variants"]) == ["ours_channels_last", "ours_channels_last_x2"]
    alone, two = r["variants"]["ours_channels_last"], r["variants"]["ours_channels_last_x2"]
    assert alone["speedup_vs_dataloader"] is None  # no baseline timed, no ratio made up
    assert alone["jobs"] == 1 and two["jobs"] == 2
    # images/s is the two runs' total, ms/iter each run's own
    assert two["images_per_s"] == pytest.approx(2 * 16 * 1000 / two["ms_per_iter"], rel=0.01)
    assert two["peak_mem_mb"] > 0 and alone["peak_mem_mb"] > 0


def test_bench_rejects_unknown_variant():
    p = subprocess.run([sys.executable, "-m", "harness", "bench", "--model", "resnet8", "--device", "cpu",
                        "--variants", "ours,ours_graphed"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "--variants: unknown ours_graphed on cpu" in p.stderr
    p = subprocess.run([sys.executable, "-m", "harness", "bench", "--jobs", "0"], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 2 and "--jobs: expected a whole number of runs at a time, at least 1, got 0" in p.stderr
