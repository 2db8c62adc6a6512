"""The usual CIFAR input pipeline, the baseline `bench` measures ours against: torchvision's CIFAR10 dataset
(per-image PIL transforms) in DataLoader workers, as the seed log and most CIFAR repositories have it.

It is built over our arrays so that every row sees the same images: the `dataloader` row trains on it
(timing.bench_dataloader), and the peer's own loader (harness.bench.peer) wraps the same dataset in its transforms.
"""

from __future__ import annotations

import time

import numpy as np
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def pil_dataset(images: np.ndarray, labels: np.ndarray, transform):
    """What torchvision.datasets.CIFAR10.__getitem__ does (a PIL image through `transform`), over our arrays."""

    class PilCifar(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.fromarray(images[i])), int(labels[i])

    return PilCifar()


def pil_loader(images: np.ndarray, labels: np.ndarray, bs: int, workers: int, pin: bool):
    """torchvision's CIFAR10 pipeline: per-image PIL transforms in DataLoader workers."""

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    return DataLoader(pil_dataset(images, labels, tf), batch_size=bs, shuffle=True, drop_last=True,
                      num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)


def bench_pil_batches(images: np.ndarray, labels: np.ndarray, bs: int, n: int = 10) -> float:
    """CPU seconds per batch of the transforms alone (no workers): what the baseline's workers must find on the
    host's cores, beside the training step, for every batch."""
    it = iter(pil_loader(images, labels, bs, 0, False))
    next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return (time.perf_counter() - t0) / n
