"""The "why the gap" ladder: from the seed log's setup to table6/resnet32.yaml, one factor per rung."""

import torch

from harness.core.checkpoint import LoopState
from harness.core.data import DeviceData, val_count
from harness.core.data_tag import DataTag
from harness.core.models import build_model, count_params
from harness.core.spec import expand_paths, flatten, load_spec
from harness.core.train import next_batch

from .helpers import ROOT

LADDER = ROOT / "experiments" / "ladder"
CIFAR10_TRAIN = 50_000  # the training images the ladder's runs split into train and validation

# The keys each rung changes in the resolved spec, against the rung before it: one factor, with what that factor
# carries. Rung 1 moves the evaluation points with the length (200 over 925k iterations, 32 over 64k; nothing in
# rung 1 reads them); rungs 3, 9 and 11 move patience and early stopping too: rung 3 because the same 1000/500
# epochs are fewer iterations on 45k images (175 per epoch at batch 256, not 185); rung 9 because the log ran SGD
# with its own scheduler (a patience of 200 epochs read off its drops, no early stopping); rung 11 because the
# plateau's patience goes back to the default a multistep schedule never reads.
CHANGES = {
    "01_64k_iterations": {"schedule.total_iters", "eval_points"},
    "02_float32": {"dtype"},
    "03_split_45k": {"data.val_fraction", "schedule.patience", "schedule.early_stopping_patience"},
    "04_crop_flip": {"data.augment"},
    "05_cifar_stem": {"model.stem"},
    "06_cifar_body": {"model.arch", "model.depth"},
    "07_he_init": {"model.init"},
    "08_shortcut_a": {"model.shortcut"},
    "09_sgd": {"optimizer.name", "optimizer.lr", "schedule.patience", "schedule.early_stopping_patience"},
    "10_weight_decay": {"optimizer.weight_decay"},
    "11_multistep": {"schedule.name", "schedule.patience"},
    "12_batch_128": {"batch_size"},
    "13_all_50k": {"data.val_fraction"},
}


def resolved(path) -> dict:
    """The resolved spec, less what names or describes it and the seeds (a rung and a table row run the same)."""
    return flatten(load_spec(path).model_dump(mode="json", exclude={"name", "description", "seeds"}))


def iterations_per_epoch(spec) -> int:
    """How many iterations the training loop takes through one permutation of the spec's training split of CIFAR-10:
    train.next_batch, driven on a stand-in split of that size (1x1 images), until it draws a new permutation."""
    n = CIFAR10_TRAIN - val_count(CIFAR10_TRAIN, spec.data)
    none, mean = torch.zeros(0), torch.zeros(3, 1, 1)
    data = DeviceData(torch.zeros(n, 3, 1, 1, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), none, none, none,
                      none, mean, mean, torch.float32, DataTag("stand-in", n, 0, 0))
    st, gen = LoopState(), torch.Generator().manual_seed(0)
    next_batch(st, data, spec, gen)
    first, steps = st.perm, 1
    while next_batch(st, data, spec, gen) is not None and st.perm is first:
        steps += 1
    return steps


def rungs():
    return expand_paths([str(LADDER)])


def test_rungs_sort_in_order_and_run_two_seeds_each():
    assert [p.stem for p in rungs()] == ["00_seed_setup", *CHANGES]
    assert all(load_spec(p).seeds == [0, 1] for p in rungs())


def test_rung_0_is_the_seed_logs_setup():
    spec = load_spec(LADDER / "00_seed_setup.yaml")
    s, o, d = spec.schedule, spec.optimizer, spec.data
    assert (spec.model.arch, spec.model.stem, spec.model.depth, spec.model.shortcut) == \
        ("torchvision_resnet34", "imagenet", 34, "B")
    assert round(count_params(build_model(spec.model)) / 1e6, 2) == 21.29
    assert (o.name, o.lr, o.betas, o.weight_decay) == ("adam", 1e-3, (0.9, 0.999), 0.0)
    assert (spec.batch_size, d.val_fraction, spec.dtype) == (256, 0.05, "float64")
    assert (d.mean, d.augment, d.test_time_mean) == ("per_pixel", "flip", True)  # the log's evidence: see rung 4
    per_epoch = iterations_per_epoch(spec)  # the log counts in epochs, the schedule in iterations
    assert per_epoch == 185  # floor(47500/256): train.next_batch starts a new permutation before a short batch
    assert (s.name, s.mode, s.gamma, s.total_iters) == ("plateau", "min", 0.1, 5000 * per_epoch)
    assert (s.patience, s.early_stopping_patience) == (1000 * per_epoch, 500 * per_epoch)
    assert spec.model.init == "torchvision"
    assert f"an epoch is {per_epoch} iterations" in spec.description


def test_rung_0_trains_as_long_as_the_seed_log_and_its_early_stopping_ends_it_past_64k():
    """The log's runs ended at epochs 580 and 506, 500 epochs after their best validation loss: a run whose
    validation loss last improves at epoch 75 (an evaluation point: one every 25 epochs) stops at epoch 575 here
    too, far past the 64k iterations (346 epochs) that rung 1 moves to."""
    from harness.core.schedule import Schedule, eval_every

    spec = load_spec(LADDER / "00_seed_setup.yaml")
    per_epoch, s = iterations_per_epoch(spec), spec.schedule
    every = eval_every(s.total_iters, spec.eval_points)
    assert every == 25 * per_epoch
    sched, stop_at = Schedule(s, spec.optimizer.lr, every), None
    for it in range(every, s.total_iters + 1, every):
        loss = 2.0 - it / 1e6 if it <= 75 * per_epoch else 2.5  # improving until epoch 75, then not
        if sched.observe_eval(it, loss, warming=False):
            stop_at = it
            break
    assert stop_at == 575 * per_epoch > 64000, stop_at
    assert sched.plateau_lr == spec.optimizer.lr  # patience 1000 epochs: the plateau never dropped before the stop
    assert load_spec(LADDER / "01_64k_iterations.yaml").schedule.total_iters == 64000


def test_each_rung_changes_one_factor():
    paths = rungs()
    for before, after in zip(paths, paths[1:], strict=False):
        a, b = resolved(before), resolved(after)
        changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        assert changed == CHANGES[after.stem], (after.stem, {k: (a.get(k), b.get(k)) for k in changed})
    rung3 = load_spec(LADDER / "03_split_45k.yaml")  # the same epochs, fewer iterations each on 45k images
    per_epoch = iterations_per_epoch(rung3)
    assert (rung3.schedule.patience, rung3.schedule.early_stopping_patience) == (1000 * per_epoch, 500 * per_epoch)
    rung9 = load_spec(LADDER / "09_sgd.yaml")  # the log's SGD drops: epochs 223, 424, 625, 201 epochs apart
    assert (rung9.schedule.patience, rung9.schedule.early_stopping_patience) == (200 * per_epoch, None)


def test_last_rung_is_table6_resnet32():
    assert resolved(rungs()[-1]) == resolved(ROOT / "experiments/table6/resnet32.yaml")


def test_descriptions_say_the_factor():
    text = {p.stem: load_spec(p).description for p in rungs()}
    assert "ITERATIONS fixed at 64k" in text["12_batch_128"] and "defined in iterations" in text["12_batch_128"]
    assert "own lr scale" in text["09_sgd"] and "epochs 223, 424 and 625" in text["09_sgd"]
    assert "stage layout ties them" in text["06_cifar_body"]
    assert "64k iterations" in text["01_64k_iterations"] and "fan_in" in text["07_he_init"]
    assert "100.00 % train" in text["04_crop_flip"] and "horizontal flip alone" in text["00_seed_setup"]
    for stem, desc in text.items():
        assert desc.startswith(f"Rung {int(stem[:2])}"), stem
