"""The "why the gap" ladder: from the seed log's setup to table6/resnet32.yaml, one factor per rung."""

import torch

from harness.core.checkpoint import LoopState
from harness.core.data import DeviceData, val_count
from harness.core.models import build_model, count_params
from harness.core.spec import expand_paths, flatten, load_spec
from harness.core.train import next_batch

from .helpers import ROOT

LADDER = ROOT / "experiments" / "ladder"
CIFAR10_TRAIN = 50_000  # the training images the ladder's runs split into train and validation

# The keys each rung changes in the resolved spec, against the rung before it. Rungs 2 and 8 move patience and early
# stopping too: rung 2 because the same 1000/500 epochs are fewer iterations on 45k images (175 per epoch at batch
# 256, not 185); rung 8 because the plateau's patience goes back to the default a multistep schedule never reads.
CHANGES = {
    "01_float32": {"dtype"},
    "02_split_45k": {"data.val_fraction", "schedule.patience", "schedule.early_stopping_patience"},
    "03_cifar_stem": {"model.stem"},
    "04_cifar_body": {"model.arch", "model.depth"},
    "05_shortcut_a": {"model.shortcut"},
    "06_sgd": {"optimizer.name", "optimizer.lr"},
    "07_weight_decay": {"optimizer.weight_decay"},
    "08_multistep": {"schedule.name", "schedule.patience", "schedule.early_stopping_patience"},
    "09_batch_128": {"batch_size"},
    "10_all_50k": {"data.val_fraction"},
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
                      none, mean, mean, torch.float32, "stand-in")
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
    assert (d.mean, d.augment, d.test_time_mean) == ("per_pixel", True, True)
    per_epoch = iterations_per_epoch(spec)  # the log counts patience in epochs, the schedule in iterations
    assert (s.name, s.mode, s.gamma, s.total_iters) == ("plateau", "min", 0.1, 64000)
    assert (s.patience, s.early_stopping_patience) == (1000 * per_epoch, 500 * per_epoch)
    assert f"an epoch is {per_epoch} iterations" in spec.description


def test_each_rung_changes_one_factor():
    paths = rungs()
    for before, after in zip(paths, paths[1:], strict=False):
        a, b = resolved(before), resolved(after)
        changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        assert changed == CHANGES[after.stem], (after.stem, {k: (a.get(k), b.get(k)) for k in changed})
    rung2 = load_spec(LADDER / "02_split_45k.yaml")  # the same epochs, fewer iterations each on 45k images
    per_epoch = iterations_per_epoch(rung2)
    assert (rung2.schedule.patience, rung2.schedule.early_stopping_patience) == (1000 * per_epoch, 500 * per_epoch)


def test_last_rung_is_table6_resnet32():
    assert resolved(rungs()[-1]) == resolved(ROOT / "experiments/table6/resnet32.yaml")


def test_descriptions_say_the_factor():
    text = {p.stem: load_spec(p).description for p in rungs()}
    assert "ITERATIONS fixed at 64k" in text["09_batch_128"] and "defined in iterations" in text["09_batch_128"]
    assert "own lr scale" in text["06_sgd"]
    assert "stage layout ties them" in text["04_cifar_body"]
    for stem, desc in text.items():
        assert desc.startswith(f"Rung {int(stem[:2])}"), stem
