"""A peer reproduction's own training loop, timed beside ours (`bench --peer DIR`).

Our `dataloader` row (harness.bench.baseline) stands for what most CIFAR repositories do; this row is one of them, run
as its author wrote it, so the ratio is against a real peer and not against our idea of one. The peer is imported
from the user's checkout of akamaster/pytorch_resnet_cifar10 (never copied here): its `resnet.resnetN()` wrapped in
`DataParallel`, its SGD and loss, its `trainer.train()` loop (per-step `.cuda()` copies, two `.item()` syncs, top-1
accuracy) and its transforms (flip, pad-4 crop, ImageNet mean/std) with its DataLoader settings. Two things differ,
both forced: the images come from our arrays (its `datasets.CIFAR10(download=True)` needs the official archive and
the internet), and on a CPU its `.cuda()` calls are pointed at the CPU for the length of the timing."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, RandomSampler

from harness.bench.baseline import pil_dataset
from harness.core.devices import sync
from harness.errors import UserError

URL = "https://github.com/akamaster/pytorch_resnet_cifar10"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what its trainer.py normalizes with


def load(path: str | Path, depth: int):
    """(trainer module, model factory, description) from a checkout; a one-line error if it is not one."""
    root = Path(path)
    for name in ("trainer.py", "resnet.py"):
        if not (root / name).is_file():
            raise UserError(f"--peer: {root / name} not found; expected a checkout of {URL}")
    sys.path.insert(0, str(root))  # trainer.py does `import resnet`: this checkout's, not one imported before
    sys.modules.pop("resnet", None)
    try:
        spec = importlib.util.spec_from_file_location("peer_trainer", root / "trainer.py")
        trainer = importlib.util.module_from_spec(spec)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its model names on import
            spec.loader.exec_module(trainer)
    except Exception as e:  # noqa: BLE001 - any import failure of foreign code is the user's checkout
        raise UserError(f"--peer: {root / 'trainer.py'} does not import ({type(e).__name__}: {e}); expected a "
                        f"checkout of {URL}") from e
    finally:
        sys.path.remove(str(root))
    factory = getattr(getattr(trainer, "resnet", None), f"resnet{depth}", None)
    if factory is None or not callable(getattr(trainer, "train", None)):
        raise UserError(f"--peer: {root} has no trainer.train() or resnet.resnet{depth}(); expected a checkout of "
                        f"{URL}")
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    where = f"{root.resolve()}" + (f" @ {commit.stdout.strip()}" if commit.returncode == 0 else "")
    return trainer, factory, where


@contextlib.contextmanager
def _cuda_means(device: torch.device):
    """On a CPU, the peer's `.cuda()` becomes `.to(device)`; on CUDA nothing changes."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self.to(device)
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def _loader(images: np.ndarray, labels: np.ndarray, bs: int, batches: int, workers: int, pin: bool):
    """Its DataLoader (shuffle, its transforms, pinned on CUDA) over our arrays, `batches` batches long: its
    `train()` runs over the whole loader, so the loader's length is the number of iterations."""

    tf = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, 4), T.ToTensor(),
                    T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
    data = pil_dataset(images, labels, tf)
    sampler = RandomSampler(data, num_samples=bs * batches, generator=torch.Generator().manual_seed(0))
    return DataLoader(data, batch_size=bs, sampler=sampler, num_workers=workers, pin_memory=pin)


def bench_peer(peer, images, labels, bs: int, iters: int, warmup: int, device: torch.device, workers: int):
    """(warm-up s, timed s) of the peer's `train()` over warmup + iters batches; the clock starts when its
    optimizer has taken `warmup` steps (an optimizer hook, so its loop is run unchanged)."""
    trainer, factory, _ = peer
    torch.manual_seed(0)
    model = torch.nn.DataParallel(factory()).to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    trainer.args = argparse.Namespace(half=False, print_freq=50)  # its defaults
    loader = _loader(images, labels, bs, warmup + iters, workers, device.type == "cuda")
    steps, clock = [0], {}

    def count(*_):
        steps[0] += 1
        if steps[0] == warmup:
            sync(device)
            clock["t0"] = time.perf_counter()

    hook = optimizer.register_step_post_hook(count)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # its main() sets this
    start = time.perf_counter()
    try:
        with _cuda_means(device), contextlib.redirect_stdout(io.StringIO()):
            trainer.train(loader, model, criterion, optimizer, 0)
        sync(device)
    finally:
        hook.remove()
        torch.backends.cudnn.benchmark = benchmark
    end = time.perf_counter()
    if steps[0] != warmup + iters:
        raise RuntimeError(f"bench: the peer took {steps[0]} optimizer steps, expected {warmup + iters}")
    t0 = clock.get("t0", start)
    return t0 - start, end - t0
