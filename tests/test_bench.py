import json
import subprocess
import sys

import pytest
import torch

from harness.bench.peer import _cuda_means
from harness.bench.render import write_bench_report
from harness.cli import main
from harness.errors import UserError

from .helpers import ROOT

# A stand-in with the interface of akamaster/pytorch_resnet_cifar10 (trainer.train over the whole loader, a global
# `args`, `.cuda()` copies, prints on import and every print_freq steps), small enough for a test; the real
# checkout is timed in the README's figures.
PEER_TRAINER = """
import resnet
print(["resnet8"])
args = None

def train(train_loader, model, criterion, optimizer, epoch):
    model.train()
    for i, (input, target) in enumerate(train_loader):
        output = model(input.cuda())
        loss = criterion(output, target.cuda())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        if i % args.print_freq == 0:
            print("Epoch", epoch, i, len(train_loader))
"""
PEER_RESNET = "import torch.nn as nn\n\ndef resnet8():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))\n"


def test_bench_json_is_machine_readable_with_a_peer_row(mini_quarter, tmp_path):
    peer = tmp_path / "peer"
    peer.mkdir()
    (peer / "trainer.py").write_text(PEER_TRAINER)
    (peer / "resnet.py").write_text(PEER_RESNET)
    p = subprocess.run([sys.executable, "-m", "harness", "bench", "--model", "resnet8", "--iters", "2", "--warmup", "1",
                        "--batch-size", "16", "--workers", "0", "--data", str(mini_quarter), "--peer", str(peer),
                        "--json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)  # the peer's own prints do not reach stdout
    assert r["device"].startswith("cpu") and r["model"] == "resnet8"
    assert list(r["variants"]) == ["dataloader", "peer", "ours"] and r["peer"] == str(peer.resolve())
    for v in ("dataloader", "peer", "ours"):
        assert r["variants"][v]["images_per_s"] > 0 and r["variants"][v]["ms_per_iter"] > 0
    assert r["variants"]["dataloader"]["speedup_vs_dataloader"] == 1.0
    assert r["variants"]["peer"]["speedup_vs_peer"] == 1.0

    # reports/bench.md is rendered from such lines; a line that is not bench JSON leaves the last good page alone
    (tmp_path / "reports" / "bench").mkdir(parents=True)
    kept = tmp_path / "reports" / "bench" / "cpu.jsonl"
    kept.write_text(p.stdout)
    page = write_bench_report(tmp_path / "reports").read_text()
    row = r["variants"]["peer"]
    assert f"| peer | {row['images_per_s']:,.1f} | {row['ms_per_iter']:.2f} |" in page
    assert "### resnet8 on cpu" in page and str(peer.resolve()) in page
    kept.write_text(p.stdout + "{not json\n")
    with pytest.raises(UserError, match=r"cpu.jsonl:2: not a `bench --json` line"):
        write_bench_report(tmp_path / "reports")
    assert (tmp_path / "reports" / "bench.md").read_text() == page
    assert not list((tmp_path / "reports").glob("*.tmp"))
    assert all(v["warmup_s"] >= 0 for v in r["variants"].values())
    assert r["loader_ms_per_batch"] > 0 and 0 < r["loader_pct_of_fastest_iter"] < 100  # augmentation is not the step
    assert r["transforms_cpu_ms_per_batch"] > 0
    assert 0 <= r["mlflow_overhead_pct"] < 100
    assert not (tmp_path / "mlruns").exists()  # the MLflow probe uses a throw-away store


def test_bench_rejects_bad_input_in_one_line(capsys, tmp_path):
    """In-process (`python -m harness` is `sys.exit(main())`): each is an exit 2 before any timing starts."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "trainer.py").write_text("import resnet\nimport no_such_module\n")
    (broken / "resnet.py").write_text("")
    cases = [(["--model", "vgg16"], "--model: expected resnetN"),
             (["--model", "resnet8", "--device", "cpu", "--variants", "ours,ours_graphed"],
              "--variants: unknown ours_graphed on cpu"),
             (["--jobs", "0"], "--jobs: expected a whole number of runs at a time, at least 1, got 0"),
             (["--group", "2,x"], "--group: expected a group size K of at least 1, or sizes such as 1,4,8, got 2,x"),
             (["--peer", str(ROOT / "harness")], "trainer.py not found; expected a checkout of"),
             (["--model", "resnet20", "--peer", str(broken)],
              "trainer.py does not import (ModuleNotFoundError: No module named 'no_such_module')")]
    for args, message in cases:
        assert main(["bench", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_bench_times_only_the_variants_asked_for_alone_and_as_jobs(mini_quarter, tmp_path):
    p = subprocess.run([sys.executable, "-m", "harness", "bench", "--model", "resnet8", "--iters", "2", "--warmup", "1",
                        "--batch-size", "16", "--data", str(mini_quarter), "--variants", "ours_channels_last",
                        "--jobs", "2", "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert list(r["variants"]) == ["ours_channels_last", "ours_channels_last_x2"]
    alone, two = r["variants"]["ours_channels_last"], r["variants"]["ours_channels_last_x2"]
    assert alone["speedup_vs_dataloader"] is None  # no baseline timed, no ratio made up
    assert alone["jobs"] == 1 and two["jobs"] == 2
    # images/s is the two runs' total, ms/iter each run's own
    assert two["images_per_s"] == pytest.approx(2 * 16 * 1000 / two["ms_per_iter"], rel=0.01)
    assert two["peak_mem_mb"] > 0 and alone["peak_mem_mb"] > 0


def test_a_peers_cuda_calls_point_at_the_cpu_only_while_it_is_timed():
    original = torch.Tensor.cuda
    x = torch.ones(2)
    with _cuda_means(torch.device("cpu")):
        assert x.cuda().device.type == "cpu"
    assert torch.Tensor.cuda is original


def test_bench_group_rows_time_k_runs_together(mini_quarter, tmp_path):
    """`bench --group 1,3`: rows for exactly those group sizes, each against one run of ours alone."""
    p = subprocess.run([sys.executable, "-m", "harness", "bench", "--model", "resnet8", "--iters", "2", "--warmup", "1",
                        "--batch-size", "16", "--data", str(mini_quarter), "--variants", "ours", "--group", "1,3",
                        "--json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)["variants"]
    assert list(r) == ["ours", "ours_group1", "ours_group3"]
    assert [(v["variant"], v["kind"]) for v in r.values()] == [("ours", "ours"), ("ours", "group"), ("ours", "group")]
    three = r["ours_group3"]
    assert three["runs"] == 3 and three["images_per_s"] == pytest.approx(3 * 16 * 1000 / three["ms_per_iter"], rel=0.01)
    assert three["images_per_s_per_run"] == pytest.approx(three["images_per_s"] / 3, rel=0.01, abs=0.05)  # both rounded
    assert three["speedup_vs_alone"] == pytest.approx(three["images_per_s"] / r["ours"]["images_per_s"], abs=0.01)
    kept = tmp_path / "reports" / "bench" / "cpu.jsonl"
    kept.parent.mkdir(parents=True)
    older = json.loads(p.stdout)
    for v in older["variants"].values():  # a record from before bench recorded the ratio and each row's kind
        v.pop("variant"), v.pop("kind")
    del older["variants"]["ours_group3"]["speedup_vs_alone"]
    kept.write_text(p.stdout + json.dumps(older) + "\n")
    page = write_bench_report(tmp_path / "reports").read_text()
    assert page.count("| runs together | images/s per run | × alone |") == 2, page
    row = f"| ours_group3 | {three['images_per_s']:,.1f} |"
    assert page.count(row) == 2 and page.count(f"| 3 | {three['images_per_s_per_run']:,.1f} | "
                                               f"{three['images_per_s'] / r['ours']['images_per_s']:.2f} |") == 2, page
