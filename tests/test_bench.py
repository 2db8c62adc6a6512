import json
import subprocess
import sys

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
    assert 0 <= r["mlflow_overhead_pct"] < 100
    assert not (tmp_path / "mlruns").exists()  # the MLflow probe uses a throw-away store


def test_bench_rejects_unknown_model():
    p = subprocess.run([sys.executable, "-m", "harness", "bench", "--model", "vgg16"], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 2 and "--model: expected resnetN" in p.stderr
