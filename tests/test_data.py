
import hashlib

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.core.checkpoint import LoopState
from harness.core.data import (
    augment,
    identify,
    load_arrays,
    split_indices,
    to_device,
    train_batch,
)
from harness.core.data_tag import DataTag
from harness.core.identity import RunIdentity
from harness.core.spec import DataSpec, RunSpec, Spec
from harness.core.train import next_batch
from harness.errors import DataError
from harness.tracking.run_facts import run_tags

from .helpers import TINY


def test_mini_loads_real_cifar(mini):
    a = load_arrays(mini)
    assert a.x_train.shape == (4068, 32, 32, 3) and a.x_test.shape == (1017, 32, 32, 3)
    assert not a.official_test and a.data_id.startswith("cifar10-mini.npz:")
    assert sorted(np.unique(a.y_train)) == list(range(10))


def test_split_is_seeded_stable_and_disjoint():
    tr, va = split_indices(50000, DataSpec(val_fraction=0.1))
    assert (len(tr), len(va)) == (45000, 5000)
    assert not set(tr) & set(va)
    tr2, va2 = split_indices(50000, DataSpec(val_fraction=0.1))
    assert (va == va2).all()
    _, va3 = split_indices(50000, DataSpec(val_fraction=0.1, split_seed=1))
    assert not (va == va3).all()
    assert len(split_indices(50000, DataSpec(val_size=2500))[1]) == 2500


def test_per_pixel_mean_uses_training_split_only(mini):
    a = load_arrays(mini)
    d = to_device(a, DataSpec(val_fraction=0.1), torch.device("cpu"), torch.float32)
    tr, _ = split_indices(len(a.x_train), DataSpec(val_fraction=0.1))
    expected = a.x_train[tr].astype(np.float64).mean(0).transpose(2, 0, 1) / 255
    assert d.mean.shape == (3, 32, 32)
    assert np.allclose(d.mean.numpy(), expected, atol=1e-5)
    assert d.sizes == {"train": 3661, "val": 407, "test": 1017}
    off = to_device(a, DataSpec(val_fraction=0.1, test_time_mean=False), torch.device("cpu"), torch.float32)
    assert off.eval_mean.abs().sum() == 0 and off.mean.abs().sum() > 0


def test_augment_is_a_translation_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32) + 1
    out = augment(x, g)
    assert out.shape == x.shape
    for i in range(2):
        img = out[i]
        # every output is a 32x32 window of the zero-padded image, possibly mirrored
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        windows = [padded[:, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(img, w) or torch.equal(img, w.flip(2)) for w in windows)


def test_corrupt_and_missing_data_fail_with_one_line(tmp_path, monkeypatch, capsys, write_spec):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    spec = write_spec(tmp_path / "experiments" / "t", "tiny")
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x_train=np.zeros((4, 32, 32, 3), np.uint8))
    for data, words in [(bad, "corrupt"), (wrong, "missing arrays"), (tmp_path / "none.npz", "file not found"),
                        (tmp_path / "nodir", "cifar-10-batches-py")]:
        assert main(["run", str(spec), "--data", str(data), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(data) in err and words in err, err
        assert "torchvision downloads" in err
    assert not (tmp_path / "mlruns").exists()


def test_torchvision_folder_without_download_is_refused(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="official md5"):
        load_arrays(tmp_path)


def test_a_spec_can_train_on_every_training_image(mini):
    """data.val_fraction 0 (Table 6's runs): no validation image; a fraction that rounds to none is refused."""
    a = load_arrays(mini)
    d = to_device(a, DataSpec(val_fraction=0), torch.device("cpu"), torch.float32)
    assert d.sizes == {"train": 4068, "val": 0, "test": 1017} and d.x_val.shape == (0, 3, 32, 32)
    assert "train=4068 val=0" in d.description
    assert len(split_indices(50000, DataSpec(val_size=0))[1]) == 0
    with pytest.raises(DataError, match="data.val_fraction 0.0001: expected between 1 and 4067 validation images"):
        split_indices(4068, DataSpec(val_fraction=0.0001))


def test_a_batch_larger_than_the_training_split_is_refused_before_any_run(store, mini, capsys, write_spec):
    """Known once spec and data are: one line per spec, exit 2, and no MLflow run (it made FAILED ones)."""
    folder = store.parent / "experiments" / "t"
    big = write_spec(folder, "big", TINY.replace("batch_size: 32", "batch_size: 3662"))
    write_spec(folder, "fits", TINY.replace("batch_size: 32", "batch_size: 3661"))  # 4068 - 407 images
    for argv in (["run", str(folder)], ["table", str(folder), "--no-report"]):
        assert main([*argv, "--data", str(mini), "--no-progress"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1] == (f"error: {big}: batch_size: expected at most the 3661 training images of this split of "
                             "cifar10-mini.npz, got 3662"), lines
        assert not store.exists()


def test_the_official_test_set_is_known_by_its_bytes_not_its_size(tmp_path, mini):
    """10,000 images of the right shape are not CIFAR-10's test set; its checksum says which are. Full training
    data (50,000 images) with it is what a run calls 'CIFAR-10 test error'."""
    assert not load_arrays(mini).official_test
    full = mini.parent / "cifar10-full.npz"
    if not full.is_file():
        pytest.skip(f"{full} is not on this machine")
    with np.load(full) as z:
        x_test, y_test = z["x_test"], z["y_test"]
    x_train, y_train = np.zeros((10, 32, 32, 3), np.uint8), np.zeros(10, np.uint8)
    np.savez(tmp_path / "copy.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    y_other = y_test.copy()
    y_other[0] = (y_other[0] + 1) % 10  # one label changed
    np.savez(tmp_path / "other.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_other)
    copy, other = load_arrays(tmp_path / "copy.npz"), load_arrays(tmp_path / "other.npz")
    assert copy.official_test and not other.official_test and len(other.x_test) == 10000
    assert not load_arrays(tmp_path / "copy.npz", with_test=False).official_test  # tuning reads no test set


def _tagged(train: int, val: int, official: bool, budget: float = 1.0) -> RunIdentity:
    return RunIdentity("h", "d", DataTag("cifar10-full.npz", train, val, 10000, official), budget)


def test_only_all_50k_images_the_official_test_set_and_budget_1_is_cifar10_test_error():
    """A 45k/5k run on the full file tests on the official test set but is not CIFAR-10 test error: its tags say
    so, and so does each part alone."""
    assert DataTag("f", 50000, 0, 10000, True).cifar10_test_error(1.0)
    assert not DataTag("f", 45000, 5000, 10000, True).cifar10_test_error(1.0)
    assert not DataTag("f", 50000, 0, 10000, True).cifar10_test_error(0.5)
    assert not DataTag("f", 50000, 0, 10000, False).cifar10_test_error(1.0)
    run = RunSpec(spec=Spec(), group="ablations", name="baseline", seed=0, budget=1.0, source_file="b.yaml")
    tags = run_tags(run, _tagged(45000, 5000, True), torch.device("cpu"))
    assert (tags["official_test_set"], tags["tested_on_official"], tags["full_training_data"]) == \
        ("false", "true", "false")
    tags = run_tags(run, _tagged(50000, 0, True), torch.device("cpu"))
    assert (tags["official_test_set"], tags["tested_on_official"], tags["full_training_data"]) == \
        ("true", "true", "true")


def test_a_runs_identity_names_the_split_it_trains_before_anything_is_on_a_device(mini):
    """identify() and to_device() say the same sizes: the identity is whole before the run opens its record."""
    arrays = load_arrays(mini)
    run = RunSpec(spec=Spec.model_validate({"data": {"val_fraction": 0.1}}), group="g", name="n", seed=0, budget=1.0,
                  source_file="n.yaml")
    ident = identify(run, arrays)
    data = to_device(arrays, run.spec.data, torch.device("cpu"), torch.float32)
    assert ident.data == data.tag and ident.data.val == len(data.y_val) > 0
    assert ident.spec_hash == run.spec_hash(arrays.data_id) and ident.tags()["official_test_set"] == "false"


def _first_batches(mini, dtype: torch.dtype, n: int = 3):
    spec = Spec.model_validate({"batch_size": 32})
    data = to_device(load_arrays(mini), spec.data, torch.device("cpu"), dtype)
    gen, st = torch.Generator().manual_seed(0), LoopState()
    return [next_batch(st, data, spec, gen) for _ in range(n)]


def test_a_seed_draws_the_same_crops_and_flips_in_float64_as_in_float32(mini):
    """The augmentation's draws do not depend on the run's dtype: the float64 batches are the float32 ones, up to
    the mean's rounding."""
    for (x32, y32), (x64, y64) in zip(_first_batches(mini, torch.float32), _first_batches(mini, torch.float64),
                                      strict=True):
        assert torch.equal(y32, y64)
        assert (x64 - x32.double()).abs().max() < 1e-6


def test_float32_batches_are_those_of_the_base_commit(mini):
    """The first three float32 batches of seed 0 (batch 32, mini data), images and labels, hash as they did when
    the augmentation's draws depended on the dtype (fa269cb): float32 runs keep their batches."""
    h = hashlib.sha256()
    for x, y in _first_batches(mini, torch.float32):
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    assert h.hexdigest()[:16] == "20cfe4896c679cdc"


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_an_npz_holding_pickled_objects_is_refused_unread(tmp_path):
    """An .npz is a file a user is handed: an object array (a pickle inside) is refused, and its code never runs."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.npz"
    x = np.empty(1, dtype=object)
    x[0] = _RunsCode(marker)
    np.savez(evil, x_train=x, y_train=np.zeros(1, np.int64), x_test=x, y_test=np.zeros(1, np.int64))
    with pytest.raises(DataError, match="allow_pickle=False") as e:
        load_arrays(evil)
    assert len(str(e.value).splitlines()) == 1 and str(evil) in str(e.value)
    assert not marker.exists()


def test_flip_only_mirrors_whole_images_and_never_shifts_them(mini):
    """data.augment: flip (the seed log's week-0 augmentation): each image is itself or its mirror, both occur;
    none gives the normalised images as they are; crop_flip shifts some of them."""
    a = load_arrays(mini)
    d = to_device(a, DataSpec(val_fraction=0.1), torch.device("cpu"), torch.float32)
    idx = torch.arange(64)
    plain, _ = train_batch(d, idx, "none", torch.Generator().manual_seed(0))
    flipped, _ = train_batch(d, idx, "flip", torch.Generator().manual_seed(0))
    same = [torch.equal(f, p) for f, p in zip(flipped, plain, strict=True)]
    mirrored = [torch.equal(f, p.flip(2)) for f, p in zip(flipped, plain, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 10 < sum(mirrored) < 54 and 10 < sum(same) < 54
    cropped, _ = train_batch(d, idx, "crop_flip", torch.Generator().manual_seed(0))
    assert sum(not (torch.equal(c, p) or torch.equal(c, p.flip(2))) for c, p in zip(cropped, plain, strict=True)) > 32


def test_the_data_tag_is_written_and_read_one_way():
    """A run's `data` tag is `str(DataTag)` and every reader goes through DataTag.read: each committed record's tag
    reads back to itself, and a tag without sizes reads as zeros instead of stopping a report."""
    import json

    from harness.core.data_tag import DataTag

    from .helpers import ROOT

    tags = {json.loads(f.read_text())["tags"]["data"] for f in (ROOT / "results").rglob("*.json")}
    assert tags and all(str(DataTag.read(t)) == t for t in tags)
    full = DataTag.read("cifar10-full.npz train=45000 val=5000 test=10000 (official test set)")
    assert (full.source, full.sizes, full.official) == ("cifar10-full.npz", {"train": 45000, "val": 5000,
                                                                             "test": 10000}, True)
    assert DataTag.read("").sizes == {"train": 0, "val": 0, "test": 0}
