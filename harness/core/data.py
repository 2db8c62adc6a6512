"""CIFAR-10 as tensors on the training device, augmented a whole batch at a time.

Per-image PIL transforms in DataLoader workers cost more than the ResNet step on a small machine and
need a host-to-device copy per batch on a GPU. The whole training set is 150 MB of uint8, so it lives
on the device; a batch is a gather, a random translation (pad 4 + 32x32 crop, as one advanced-index
gather) and a flip, all as a few tensor ops with no host sync.
"""

from __future__ import annotations

import hashlib
import socket
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from harness.core.data_tag import DataTag
from harness.core.identity import RunIdentity
from harness.core.spec import DataSpec, RunSpec
from harness.errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DOWNLOAD_HINT = "torchvision downloads the official archive with --data DIR where there is internet"
DOWNLOAD_TIMEOUT_S = 20

# SHA-256 of the official CIFAR-10 test set: the bytes of x_test (10000x32x32x3 uint8, NHWC, in the archive's
# order) followed by those of y_test as uint8, as the official archive's test batch gives them.
OFFICIAL_TEST_SHA256 = "8193b3fbce55bec361cd1b8fd4880cb1649832dc4d6de6da1e7a21847a4843aa"


def test_set_sha256(x_test: np.ndarray, y_test: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(x_test, dtype=np.uint8).tobytes())
    h.update(np.asarray(y_test).astype(np.uint8).tobytes())
    return h.hexdigest()


@dataclass
class Arrays:
    x_train: np.ndarray  # (N, 32, 32, 3) uint8
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    data_id: str  # identity of the bytes, part of every run's hash
    source: str  # what a human reads in reports: file name or "torchvision CIFAR10"
    # The official test set, known by its bytes (OFFICIAL_TEST_SHA256) or torchvision's md5-checked archive:
    # ten thousand other images of the right shape are not it.
    official_test: bool = False


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _check(path: Path, name: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DataError(f"{path}: {name}: expected uint8 images of shape (N, 32, 32, 3) (NHWC), "
                        f"got {x.dtype} {x.shape}; {DOWNLOAD_HINT}")
    if y.shape != (len(x),):
        raise DataError(f"{path}: labels for {name}: expected shape ({len(x)},), got {y.shape}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels for {name}: expected classes 0..9, got {int(y.min())}..{int(y.max())}")


def _load_npz(path: Path, with_test: bool = True) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as z:  # lazy: arrays not asked for are never read; no pickle runs
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}: expected keys {list(NPZ_KEYS)} "
                                "(uint8 NHWC images and 0..9 labels); "
                                f"{DOWNLOAD_HINT}")
            arr = {k: z[k] for k in NPZ_KEYS[:2]}
            if with_test:
                arr.update(x_test=z["x_test"], y_test=z["y_test"])
            else:  # tuning: the test split stays on disk
                arr.update(x_test=np.zeros((0, 32, 32, 3), np.uint8), y_test=np.zeros(0, np.int64))
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: unreadable or corrupt .npz ({type(e).__name__}: {e}); expected an "
                        f"npz with {list(NPZ_KEYS)}; {DOWNLOAD_HINT}") from None
    _check(path, "x_train", arr["x_train"], arr["y_train"])
    _check(path, "x_test", arr["x_test"], arr["y_test"])
    st = path.stat()
    official = len(arr["y_test"]) > 0 and test_set_sha256(arr["x_test"], arr["y_test"]) == OFFICIAL_TEST_SHA256
    return Arrays(arr["x_train"], arr["y_train"].astype(np.int64), arr["x_test"], arr["y_test"].astype(np.int64),
                  data_id=f"{path.name}:{_sha256(str(path.resolve()), st.st_size, st.st_mtime)}",
                  source=path.name, official_test=official)


def _load_torchvision(root: Path, download: bool) -> Arrays:
    intact, created = (root / "cifar-10-batches-py").is_dir(), not root.exists()
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a blocked network fails in seconds instead of hanging
    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except Exception as e:  # torchvision: RuntimeError on md5 mismatch; URLError, a timeout, DNS when offline
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if download and not intact and isinstance(e, OSError):
            if created and not any(root.iterdir()):  # nothing half-made left behind
                root.rmdir()
            raise DataError(f"{root}: no CIFAR-10 here and the download failed (no internet? {why}): put "
                            f"cifar-10-batches-py/ in {root}/ or pass DATA=path/to.npz (make), --data (harness)") \
                from None
        raise DataError(f"{root}: no intact CIFAR-10 here (expected {root}/cifar-10-batches-py with the "
                        f"official md5 sums, or an .npz file; {why}); {DOWNLOAD_HINT}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return Arrays(train.data, np.asarray(train.targets, dtype=np.int64), test.data,
                  np.asarray(test.targets, dtype=np.int64), data_id="torchvision-cifar10",
                  source="torchvision CIFAR10 (official archive)", official_test=True)  # md5-checked by torchvision


def load_arrays(path: str | Path, download: bool = False, with_test: bool = True) -> Arrays:
    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(f"--data {path}: file not found (expected an .npz with {list(NPZ_KEYS)}); {DOWNLOAD_HINT}")
        return _load_npz(path, with_test)
    if not path.exists() and not download:
        raise DataError(f"--data {path}: not found (expected a folder holding cifar-10-batches-py/ or an .npz file); "
                        f"{DOWNLOAD_HINT}")
    arrays = _load_torchvision(path, download)
    if not with_test:
        arrays.x_test, arrays.y_test, arrays.official_test = arrays.x_test[:0], arrays.y_test[:0], False
    return arrays


@dataclass
class DeviceData:
    """Train/val/test tensors on the device, images kept as uint8 NCHW until a batch is made."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: torch.Tensor  # (3, 32, 32) or (3, 1, 1) in [0, 1] units; zeros when mean subtraction is off
    eval_mean: torch.Tensor
    dtype: torch.dtype
    tag: DataTag  # the data's file, split sizes and whether its test set is the official one

    @property
    def description(self) -> str:
        return str(self.tag)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def val_count(n: int, spec: DataSpec) -> int:
    """Validation images of `n` training images; 0 only where the spec asks for none (a fraction that rounds to
    no image would silently drop validation and is refused)."""
    n_val = spec.val_size if spec.val_size is not None else round(n * spec.val_fraction)
    if spec.has_validation and not 0 < n_val < n:
        key = "data.val_size" if spec.val_size is not None else f"data.val_fraction {spec.val_fraction:g}"
        raise DataError(f"{key}: expected between 1 and {n - 1} validation images of {n} training images, "
                        f"got {n_val}")
    return n_val


def split_indices(n: int, spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """A split that depends on split_seed only, so every seed and every spec sees the same validation set."""
    n_val = val_count(n, spec)
    perm = np.random.default_rng(spec.split_seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def check_batch_fits(runs, arrays: Arrays) -> None:
    """Every run's split and batch size against these arrays, once both are known and before any run starts: a
    batch larger than its training split (or a split the data cannot make) is one line per spec file, and no
    MLflow run is made for it."""
    errors: dict[str, None] = {}
    n = len(arrays.x_train)
    for run in runs:
        try:
            n_train = n - val_count(n, run.spec.data)
        except DataError as e:
            errors[f"{run.source_file}: {e} in {arrays.source}"] = None
            continue
        if run.spec.batch_size > n_train:
            errors[f"{run.source_file}: batch_size: expected at most the {n_train} training images of this split "
                   f"of {arrays.source}, got {run.spec.batch_size}"] = None
    if errors:
        raise DataError(*errors)


def to_device(arrays: Arrays, spec: DataSpec, device: torch.device, dtype: torch.dtype) -> DeviceData:
    """The split of `spec` on `device`, images kept uint8 until a batch is made; the mean comes from the training
    images alone, so that nothing of the validation or test images leaks into training."""
    tr, va = split_indices(len(arrays.x_train), spec)

    def images(x):
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)

    def labels(y):
        return torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)

    x_train = images(arrays.x_train[tr])
    acc = torch.float64 if dtype == torch.float64 else torch.float32  # a float64 run is float64 throughout
    if spec.mean == "per_pixel":
        mean = x_train.to(acc).mean(0) / 255.0
    elif spec.mean == "per_channel":
        mean = (x_train.to(acc).mean((0, 2, 3)) / 255.0).view(3, 1, 1)
    else:
        mean = torch.zeros(3, 1, 1, device=device, dtype=dtype)
    eval_mean = mean if spec.test_time_mean else torch.zeros_like(mean)
    return DeviceData(x_train, labels(arrays.y_train[tr]), images(arrays.x_train[va]), labels(arrays.y_train[va]),
                      images(arrays.x_test), labels(arrays.y_test), mean.to(dtype), eval_mean.to(dtype), dtype,
                      data_tag(arrays, spec))


def identify(run: RunSpec, arrays: Arrays) -> RunIdentity:
    """The run's identity on these arrays (harness.core.identity), computed once by the life of the run."""
    return RunIdentity(run.spec_hash(arrays.data_id), arrays.data_id, data_tag(arrays, run.spec.data), run.budget)


def data_tag(arrays: Arrays, spec: DataSpec) -> DataTag:
    """What a run on `spec`'s split of these arrays trains and is tested on: known before anything is on a device,
    so that a run's identity (harness.core.identity) is whole before it opens its record."""
    n = len(arrays.x_train)
    n_val = val_count(n, spec)
    return DataTag(arrays.source, n - n_val, n_val, len(arrays.x_test), arrays.official_test)


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x_uint8.to(dtype).div_(255.0).sub_(mean)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random translation by up to `pad` pixels (zero = mean pixel after subtraction) and horizontal flip.

    Equivalent to pad-4 + random 32x32 crop + random flip, done for the whole batch as one gather. The draws are
    integer shifts and float32 flips whatever the images' dtype, so one seed means the same batches in every dtype.
    """
    b, c, h, w = x.shape
    dev = x.device
    shifts = torch.randint(0, 2 * pad + 1, (2, b), device=dev, generator=generator)
    flips = torch.rand(b, device=dev, generator=generator, dtype=torch.float32) < 0.5
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = shifts[0].view(b, 1) + torch.arange(h, device=dev)  # (b, h)
    cols = shifts[1].view(b, 1) + torch.arange(w, device=dev)  # (b, w)
    cols = torch.where(flips.view(b, 1), cols.flip(1), cols)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return xp[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip of each image of the batch, drawn as augment() draws its flips."""
    flips = torch.rand(x.shape[0], device=x.device, generator=generator, dtype=torch.float32) < 0.5
    return torch.where(flips.view(-1, 1, 1, 1), x.flip(3), x)


AUGMENTS = {"none": None, "flip": flip, "crop_flip": augment}  # data.augment -> what a training batch goes through


def train_batch(data: DeviceData, idx: torch.Tensor, how: str, generator: torch.Generator):
    """The training images at `idx`, normalised and augmented as data.augment (`how`) says."""
    x = normalize(data.x_train[idx], data.mean, data.dtype)
    if (transform := AUGMENTS[how]) is not None:
        x = transform(x, generator)
    return x, data.y_train[idx]
