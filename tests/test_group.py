"""Grouped training (harness.core.grouped): each member ends as it would alone, resumes after SIGKILL, diverges alone.

Tolerance, in float64 (where a tight check is possible): a member's losses agree with its run alone to 1e-10, its
weights to 1e-9, and its error counts and lr exactly. Not bit-identical: the grouped convolution adds its terms in
another order than the convolution of one run. Resuming a killed group is bit-exact against the uninterrupted group.
"""

import json
import math
import signal
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient
from torch.func import functional_call, vmap

from harness.cli import main
from harness.core import grouped as group
from harness.core.data import load_arrays, to_device
from harness.core.meter import Diverged
from harness.core.spec import RunSpec, Spec, load_spec, resolve_runs
from harness.core.train import Trainee, param_dtype, train
from harness.tracking.experiments import group_experiments

from .faults import killed_after
from .helpers import ROOT, TINY

# two evaluation points: in float64 on a CPU the evaluations, not the 12 steps, take most of these tests' time
F64 = TINY.replace("seeds: [0]", "seeds: [0, 1, 2]").replace("eval_points: 4", "eval_points: 2") + "dtype: float64\n"
LOSS_TOL = 1e-10
CPU = torch.device("cpu")


def _close(a: dict, b: dict) -> None:
    """Metrics of one evaluation point: error counts equal, losses within LOSS_TOL."""
    for k in ("train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error", "lr"):
        tol = LOSS_TOL if k.endswith("loss") else 0
        assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])


def _runs(path, budget=1.0):
    return resolve_runs(path, load_spec(path), budget)


def _alone(run, arrays):
    hist = {}
    final, model = train(run, to_device(arrays, run.spec.data, CPU, param_dtype(run.spec)), CPU,
                         on_eval=lambda it, m: hist.__setitem__(it, dict(m)) and False, progress=False)
    return hist, final, model


def _together(runs, arrays):
    hist, ends = {r.seed: {} for r in runs}, {}

    def hook(seed):
        return lambda it, m: hist[seed].__setitem__(it, dict(m)) and False

    members = [Trainee(r, to_device(arrays, r.spec.data, CPU, param_dtype(r.spec)), CPU, on_eval=hook(r.seed),
                       progress=False) for r in runs]
    group.train_group(members, CPU, lambda m, out: ends.__setitem__(m.run.seed, (out, m.model)))
    return hist, ends


@pytest.fixture(scope="module")
def f64_group(tmp_path_factory, mini_quarter, write_spec):
    """The F64 spec's three seeds trained as one uninterrupted group, without MLflow: (spec path, history, ends),
    shared by the tests that compare against it (float64 on this CPU is slow: ~15 s a run)."""
    spec = write_spec(tmp_path_factory.mktemp("f64") / "experiments" / "t", "tiny", F64)
    return (spec, *_together(_runs(spec), load_arrays(mini_quarter)))


@pytest.mark.slow
def test_a_group_of_three_seeds_trains_each_as_alone(f64_group, mini_quarter):
    spec, hist, ends = f64_group
    runs, arrays = _runs(spec), load_arrays(mini_quarter)
    for r in runs:
        alone_hist, alone_final, alone_model = _alone(r, arrays)
        assert sorted(hist[r.seed]) == sorted(alone_hist) == [6, 12]
        for it in alone_hist:
            _close(hist[r.seed][it], alone_hist[it])
        final, model = ends[r.seed]
        _close(final.metrics, alone_final.metrics)
        assert final.iterations == alone_final.iterations == 12
        for (name, a), b in zip(model.state_dict().items(), alone_model.state_dict().values(), strict=True):
            assert torch.allclose(a.double(), b.double(), rtol=0, atol=1e-9), name
    assert hist[0][12]["train_loss"] != hist[1][12]["train_loss"]  # the members are different runs


def test_partition_groups_what_shares_a_step():
    base = Spec()

    def rs(seed, **fields):
        return RunSpec(spec=base.model_copy(update=fields), group="g", name="n", seed=seed, budget=1.0,
                       source_file="f")

    other_opt = base.optimizer.model_copy(update={"lr": 0.5})
    runs = [rs(0), rs(1), rs(0, batch_size=64), rs(2, optimizer=other_opt), rs(3)]
    assert [[(r.seed, r.spec.batch_size) for r in g] for g in group.partition(runs, 3)] == \
        [[(0, 128), (1, 128), (2, 128)], [(3, 128)], [(0, 64)]]
    assert [len(g) for g in group.partition(runs, 1)] == [1] * 5
    bf16 = [rs(seed, dtype="bfloat16") for seed in (0, 1, 2)]
    assert [[r.seed for r in g] for g in group.partition(bf16 + runs[:2], 3)] == [[0], [1], [2], [0, 1]]


def test_autocast_does_not_act_inside_vmap_so_bf16_runs_train_alone():
    """Why group.groupable keeps bf16 runs alone (pytorch/pytorch#192617): the same convolution comes out bf16 under
    autocast alone and float32 under vmap. When torch changes that, this fails and bf16 may be grouped."""
    conv = torch.nn.Conv2d(3, 4, 3)
    stacked = {n: torch.stack([p, p]) for n, p in conv.named_parameters()}
    x = torch.randn(2, 1, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        alone = conv(x[0])
        together = vmap(lambda p, x: functional_call(conv, p, (x,)))(stacked, x)
    assert (alone.dtype, together.dtype) == (torch.bfloat16, torch.float32)


def _finals(uri, exp="t"):
    c = MlflowClient(uri)
    runs = c.search_runs(group_experiments(c, exp))
    return {r.info.run_name: r for r in runs}, c


@pytest.mark.slow
def test_killed_group_resumes_every_member_as_uninterrupted(f64_group, tmp_path, monkeypatch, mini_quarter, env_with):
    spec, ref, _ = f64_group  # the uninterrupted group
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/killed/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = [sys.executable, "-m", "harness", "run", str(spec), "--data", str(mini_quarter), "--group", "3"]
    # Killed before iteration 8's batch: the checkpoints are those of iteration 6.
    p = subprocess.run(args, env=env_with(MLFLOW_TRACKING_URI=uri, **killed_after(7)), cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    killed, _ = _finals(uri)
    assert len(killed) == 3 and {r.info.status for r in killed.values()} == {"RUNNING"}
    ckpts = [p.name for p in (tmp_path / "killed" / "checkpoints").glob("*.pt")]
    assert len([n for n in ckpts if not n.endswith(".prev.pt")]) == 3, ckpts  # each member's own, at iteration 6
    assert main(["run", str(spec), "--data", str(mini_quarter), "--group", "3", "--no-progress"]) == 0
    resumed, c = _finals(uri)
    assert {n: r.info.run_id for n, r in resumed.items()} == {n: r.info.run_id for n, r in killed.items()}
    for seed in (0, 1, 2):
        r = resumed[f"tiny-s{seed}"]
        assert r.info.status == "FINISHED"
        history = {m.step: m.value for m in c.get_metric_history(r.info.run_id, "train_loss")}
        assert history == {it: ref[seed][it]["train_loss"] for it in (6, 12)}  # bit-exact on resume
        assert r.data.metrics["test_error"] == ref[seed][12]["test_error"]
    assert main(["run", str(spec), "--data", str(mini_quarter), "--group", "3", "--no-progress"]) == 0  # all skipped
    assert len(_finals(uri)[0]) == 3


@pytest.mark.slow
def test_a_member_that_diverges_fails_alone(store, mini_quarter, write_spec):
    folder = store.parent / "experiments" / "t"
    bad = write_spec(folder, "a_diverges", F64.replace("lr: 0.1", "lr: 1.0e+30").replace("[0, 1, 2]", "[0]"))
    good = write_spec(folder, "b_fine", F64.replace("[0, 1, 2]", "[0]"))
    assert main(["run", str(bad), str(good), "--data", str(mini_quarter), "--group", "2", "--no-progress"]) == 1
    runs, c = _finals(f"sqlite:///{store}/mlflow.db")
    assert runs["a_diverges-s0"].info.status == "FAILED"
    assert runs["a_diverges-s0"].data.tags["failure"] == "diverged"
    fine = runs["b_fine-s0"]
    assert fine.info.status == "FINISHED"
    _, alone_final, _ = _alone(_runs(good)[0], load_arrays(mini_quarter))
    _close(fine.data.metrics, alone_final.metrics)
    logged = {m.step: m.value for m in c.get_metric_history(runs["a_diverges-s0"].info.run_id, "train_loss")}
    alone = {}
    with pytest.raises(Diverged):  # alone, the same run diverges at the same evaluation point
        train(_runs(bad)[0], to_device(load_arrays(mini_quarter), _runs(bad)[0].spec.data, CPU, torch.float64), CPU,
              on_eval=lambda it, m: alone.__setitem__(it, m["train_loss"]) and False, progress=False)
    assert sorted(logged) == sorted(alone), (logged, alone)
    assert all(math.isclose(logged[k], alone[k], rel_tol=1e-9) for k in alone), (logged, alone)


def test_group_needs_one_job(store, mini_quarter, capsys, write_spec):
    spec = write_spec(store.parent / "experiments" / "t", "tiny")
    assert main(["run", str(spec), "--data", str(mini_quarter), "--group", "2", "--jobs", "2"]) == 2
    assert "--group 2: expected --group 1 with --jobs" in capsys.readouterr().err
    assert main(["run", str(spec), "--data", str(mini_quarter), "--group", "0"]) == 2
    assert "--group: expected a group size of at least 1, got 0" in capsys.readouterr().err


def test_offline_group_writes_each_members_record(store, mini_quarter, write_spec):
    """`run --offline --group K` (the lent GPU machine has no MLflow): each member its own record.json, as alone."""
    spec = write_spec(store.parent / "experiments" / "t", "tiny", TINY.replace("seeds: [0]", "seeds: [0, 1]"))
    out = store.parent / "records"
    args = ["run", str(spec), "--data", str(mini_quarter), "--group", "2", "--offline", str(out), "--no-progress"]
    assert main(args) == 0
    records = {r["run_name"]: r for r in (json.loads(p.read_text()) for p in out.glob("*/record.json"))}
    assert sorted(records) == ["tiny-s0", "tiny-s1"]
    for r in records.values():
        assert r["status"] == "FINISHED" and [h["step"] for h in r["history"]] == [3, 6, 9, 12]
        assert r["final"]["iterations"] == 12
    assert records["tiny-s0"]["history"][-1]["train_loss"] != records["tiny-s1"]["history"][-1]["train_loss"]
    assert not list(out.glob("*/*.pt"))  # no checkpoint left behind
    assert main(args) == 0  # all recorded: skipped


def test_the_gpu_scripts_run_trains_several_specs_grouped_into_records(mini_quarter, tmp_path, env_with, write_spec):
    """docs/gpu.md's campaign command: `scripts/gpu.sh run SPEC... --group K`, each member's record in $OUT/records."""
    folder = tmp_path / "experiments" / "t"
    specs = [write_spec(folder, "a", TINY), write_spec(folder, "b", TINY.replace("lr: 0.1", "lr: 0.05"))]
    env = env_with(OUT=tmp_path / "out", RECORDS=tmp_path / "records",
                   PATH=f"{tmp_path / 'bin'}:{env_with()['PATH']}")
    (tmp_path / "out").mkdir()
    (tmp_path / "bin").mkdir()
    python3 = tmp_path / "bin" / "python3"  # the device's python3, here this interpreter
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu.sh"), "run", *map(str, specs), "--data", str(mini_quarter),
                        "--group", "2"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    log = (tmp_path / "out" / "run.log").read_text()
    assert "group: 2 run(s) trained together" in log, log
    records = sorted((tmp_path / "out" / "records").glob("*/record.json"))
    assert [json.loads(r.read_text())["status"] for r in records] == ["FINISHED"] * 2, log
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "gpu.sh"), "run", str(specs[0]), "--data",
                          str(tmp_path / "missing.npz")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2, bad.stdout + bad.stderr  # the run's exit status, not the copy's


@pytest.mark.slow
def test_ghost_bn_members_train_as_alone_in_float64(tmp_path, mini_quarter, write_spec):
    """model.bn_batch in a group: each member's BN takes its statistics over its own groups of images, as alone
    (the vmapped step runs the same GhostBatchNorm2d per member), to the float64 tolerances above."""
    from harness.core.models import GhostBatchNorm2d

    text = F64.replace("seeds: [0, 1, 2]", "seeds: [0, 1]").replace("depth: 8}", "depth: 8, bn_batch: 16}")
    spec = write_spec(tmp_path / "experiments" / "t", "ghost", text)
    runs, arrays = _runs(spec), load_arrays(mini_quarter)
    hist, ends = _together(runs, arrays)
    for r in runs:
        alone_hist, alone_final, alone_model = _alone(r, arrays)
        assert sorted(hist[r.seed]) == sorted(alone_hist) == [6, 12]
        for it in alone_hist:
            _close(hist[r.seed][it], alone_hist[it])
        final, model = ends[r.seed]
        assert sum(isinstance(m, GhostBatchNorm2d) for m in model.modules()) == 7
        for (name, a), b in zip(model.state_dict().items(), alone_model.state_dict().values(), strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-9), name


@pytest.mark.slow
def test_check_group_passes_under_inductor_on_the_cpu_and_fails_when_bn_statistics_are_not_written_back(
        monkeypatch, capsys, mini_quarter):
    """`check-group` at a tiny size (K=2 ResNet-8, batch 16, 6 iterations, float64, torch.compile's inductor):
    every member trains as alone. With the write-back of BN running statistics removed from the grouped step (the
    fault it exists to catch), it fails on them."""
    assert main(["check-group", "--k", "2", "--iters", "6", "--depth", "8", "--batch-size", "16", "--data",
                 str(mini_quarter), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "float64, compile=default" in err and err.count(": ok") == 2 and "check-group: PASS" in err, err
    real_copy = torch.Tensor.copy_

    def no_write_back(self, src, *a, **k):  # the members' buffers keep their initial statistics
        if self.dim() == 1 and src.dim() == 1 and not self.requires_grad and self.is_leaf and self.numel() >= 8:
            return self
        return real_copy(self, src, *a, **k)

    monkeypatch.setattr(torch.Tensor, "copy_", no_write_back)
    assert main(["check-group", "--k", "2", "--iters", "6", "--depth", "8", "--batch-size", "16", "--data",
                 str(mini_quarter), "--device", "cpu", "--compile", "eager"]) == 1
    assert "DIFFERS" in capsys.readouterr().err
