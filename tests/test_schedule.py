"""The Schedule object: one lr per iteration for every family, fed back the numbers it decides on."""

import random

import pytest
import torch

from harness.core.schedule import Schedule, eval_every
from harness.core.spec import ScheduleSpec, WarmupSpec


def _lrs(sched: Schedule, iters) -> list[float]:
    return [sched.lr_at(it) for it in iters]


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("patience", [0, 1, 3])
def test_plateau_is_torchs_reduce_lr_on_plateau_counted_in_evaluation_points(mode, patience):
    """The plateau family used torch's ReduceLROnPlateau on the optimizer; the schedule keeps its decisions: a
    relative threshold of 1e-4 (a tiny gain is no gain), patience in evaluation points, no drop below 1e-8."""
    every, lr, gamma = 5, 0.1, 0.1
    rng = random.Random(patience)
    losses, v = [], 2.0
    for _ in range(80):  # plateaus, real gains and gains within the relative threshold
        v = v * rng.choice([1.0, 1.0, 0.99995, 0.9, 1.2])
        losses.append(v)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=gamma, patience=patience)
    s = ScheduleSpec(name="plateau", milestones=[], total_iters=1000, patience=patience * every, mode=mode,
                     gamma=gamma)
    sched = Schedule(s, lr, every)
    expected, got = [], []
    for k, loss in enumerate(losses):
        ref.step(loss)
        expected.append(opt.param_groups[0]["lr"])
        sched.observe_eval((k + 1) * every, loss, warming=False)
        got.append(sched.lr_at((k + 1) * every))
    assert got == expected
    assert len(set(got)) > 2  # several drops happened, and the lr stops short of ~0 (eps)


def test_multistep_is_the_papers_lr_at_its_iterations():
    """He et al. 2015 §4.2: lr 0.1, divided by 10 at 32k and 48k iterations, terminated at 64k."""
    sched = Schedule(ScheduleSpec(), 0.1, 2000)
    paper = {0: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01, 48000: 0.001, 63999: 0.001}
    assert {it: sched.lr_at(it) for it in paper} == pytest.approx(paper, rel=1e-12)


def _torch_lrs(family: str, total: int, ramp: int, milestones: list[int]) -> list[float]:
    """The lr of each iteration from torch.optim.lr_scheduler: MultiStepLR or CosineAnnealingLR, times LinearLR
    from 1/ramp up to 1 over the first `ramp` iterations when `ramp` is set."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    lrs = torch.optim.lr_scheduler
    chain = [lrs.MultiStepLR(opt, milestones, gamma=0.1) if family == "multistep" else
             lrs.CosineAnnealingLR(opt, T_max=total)]
    if ramp:
        chain.append(lrs.LinearLR(opt, start_factor=1 / ramp, end_factor=1.0, total_iters=ramp - 1))
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        for s in chain:
            s.step()
    return out


@pytest.mark.parametrize("ramp", [0, 12])
@pytest.mark.parametrize("family", ["multistep", "cosine"])
def test_multistep_and_cosine_are_torchs_schedulers_with_one_linear_ramp(family, ramp):
    milestones = [30, 45] if family == "multistep" else []
    sched = Schedule(ScheduleSpec(name=family, total_iters=60, milestones=milestones, warmup_iters=ramp), 0.1, 4)
    assert _lrs(sched, range(60)) == pytest.approx(_torch_lrs(family, 60, ramp, milestones), rel=1e-9)


def test_the_ramp_multiplies_a_plateau_drop_made_inside_it():
    """torch's LinearLR and ReduceLROnPlateau on one optimizer: a drop inside the ramp scales the ramped lr."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / 12, end_factor=1.0, total_iters=11)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=0)
    sched = Schedule(ScheduleSpec(name="plateau", milestones=[], total_iters=60, warmup_iters=12, patience=0), 0.1,
                     4)
    expected, got = [], []
    for it in range(60):
        expected.append(opt.param_groups[0]["lr"])
        got.append(sched.lr_at(it))
        opt.step()
        ramp.step()
        if it % 4 == 3:  # a worse validation loss at every point: each one after the first drops the lr
            plateau.step(1.0 + it)
            sched.observe_eval(it + 1, 1.0 + it, warming=False)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got[8] < got[7] and got[12] < got[8]  # the first drop is inside the ramp


def test_resnet110_warmup_holds_its_lr_until_the_training_error_drops_then_the_ramp_applies():
    s = ScheduleSpec(name="plateau", milestones=[], total_iters=200, patience=0, warmup_iters=50,
                     warmup=WarmupSpec(lr=0.01, until_train_error=80, max_iters=100))
    sched = Schedule(s, 0.1, 20)
    assert _lrs(sched, range(40)) == [0.01] * 40
    sched.observe_eval(20, 5.0, warming=True)
    sched.observe_eval(40, 9.0, warming=True)  # worse, but the plateau does not step during the warm-up
    assert sched.plateau_lr == 0.1
    sched.observe_train_error(85.0)  # not yet
    assert sched.warming(40)
    sched.observe_train_error(79.9)
    assert not sched.warming(40) and sched.lr_at(40) == 0.1 * (41 / 50)
    capped = Schedule(s, 0.1, 20)  # never below the threshold: max_iters ends the warm-up
    assert capped.warming(99) and not capped.warming(100) and capped.lr_at(100) == 0.1


def test_early_stopping_counts_iterations_since_the_best_validation_loss():
    s = ScheduleSpec(milestones=[], total_iters=100, early_stopping_patience=30)
    sched = Schedule(s, 0.1, 10)
    assert [sched.observe_eval(it, loss, warming=False) for it, loss in
            ((10, 2.0), (20, 1.0), (30, 1.5), (40, 1.2), (50, 1.1))] == [False, False, False, False, True]
    never = Schedule(ScheduleSpec(milestones=[], total_iters=100), 0.1, 10)
    assert not any(never.observe_eval(it, 1.0 + it, warming=False) for it in range(10, 100, 10))


def test_state_dict_resumes_the_same_lrs():
    s = ScheduleSpec(name="plateau", milestones=[], total_iters=100, patience=0, gamma=0.5, warmup_iters=5,
                     early_stopping_patience=50, warmup=WarmupSpec(lr=0.01, until_train_error=50, max_iters=60))
    losses = [3.0, 2.0, 2.5, 2.4, 2.6, 1.9, 2.0, 2.1, 2.2, 2.3]
    errors = {20: 70.0, 40: 40.0}

    def drive(sched, start, stop):
        lrs = []
        for it in range(start, stop):  # as the training loop feeds it
            warming = sched.warming(it)
            lrs.append(sched.lr_at(it))
            if warming and it + 1 in errors:
                sched.observe_train_error(errors[it + 1])
            if (it + 1) % 10 == 0:
                sched.observe_eval(it + 1, losses[it // 10], warming)
        return lrs

    whole = drive(Schedule(s, 0.1, 10), 0, 100)
    first = Schedule(s, 0.1, 10)
    head = drive(first, 0, 50)
    resumed = Schedule(s, 0.1, 10)
    resumed.load_state_dict(first.state_dict())
    assert head + drive(resumed, 50, 100) == whole
    assert len(set(whole)) > 3


def test_eval_every_spaces_the_points_over_the_run():
    assert [eval_every(64000, 32), eval_every(12, 4), eval_every(13, 4), eval_every(3, 4)] == [2000, 3, 4, 1]
    for total in range(1, 200):  # the fewest iterations between points that fit `points` evaluations in the run
        for points in range(1, 40):
            every = eval_every(total, points)
            assert every * points >= total and (every == 1 or (every - 1) * points < total)


def test_plateau_factor_must_be_below_one():
    with pytest.raises(ValueError, match="below 1"):
        Schedule(ScheduleSpec(name="plateau", milestones=[], gamma=1.0), 0.1, 10)


def _plateau_run(tmp_path):
    from harness.core.spec import Spec, resolve_runs

    spec = Spec.model_validate({
        "model": {"arch": "resnet", "depth": 8}, "batch_size": 32, "data": {"val_size": 200}, "eval_points": 6,
        "optimizer": {"lr": 0.8},
        "schedule": {"name": "plateau", "milestones": [], "total_iters": 24, "patience": 4, "gamma": 0.5,
                     "warmup_iters": 6}})
    return resolve_runs(tmp_path / "experiments" / "t" / "p.yaml", spec, 1.0)[0]


@pytest.mark.slow
@pytest.mark.parametrize("legacy", [False, True], ids=["checkpoint", "checkpoint_from_before_schedule"])
def test_plateau_run_resumes_to_the_same_numbers(mini_quarter, tmp_path, legacy):
    """Killed after an evaluation point (plateau state, ramp and data order in the checkpoint), resumed; also from
    a checkpoint in the layout written before the Schedule object (its state in the loop's dict and in torch's
    ReduceLROnPlateau), which a run killed then still resumes from."""
    from harness.core.data import load_arrays, to_device
    from harness.core.train import param_dtype, train

    run = _plateau_run(tmp_path)
    data = to_device(load_arrays(mini_quarter), run.spec.data, torch.device("cpu"), param_dtype(run.spec))
    drop = ("images_per_s", "train_seconds")
    whole, _ = train(run, data, torch.device("cpu"), progress=False, evaluate_test=False)
    reference = {k: v for k, v in whole.as_dict().items() if k not in drop}

    def stop_at_16(step, metrics):
        if step == 16:
            raise KeyboardInterrupt
        return False

    ckpt = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):  # after iteration 16's on_eval: the checkpoint is the one of 12
        train(run, data, torch.device("cpu"), checkpoint=ckpt, on_eval=stop_at_16, progress=False,
              evaluate_test=False)
    if legacy:
        ck = torch.load(ckpt, weights_only=False)
        state = ck.pop("schedule")
        ck["loop"].update({k: state[k] for k in ("warmup_done", "plateau_lr", "best_val_loss", "best_val_iter")})
        ck["plateau"] = {"best": state["plateau_best"], "num_bad_epochs": state["plateau_bad"], "patience": 1}
        torch.save(ck, ckpt)
    resumed, _ = train(run, data, torch.device("cpu"), checkpoint=ckpt, progress=False, evaluate_test=False)
    assert {k: v for k, v in resumed.as_dict().items() if k not in drop} == reference
