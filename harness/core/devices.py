"""Where work runs: the device a command asked for, its name in every record, and how workers share devices.

`run`, `table`, `tune` and `bench` all take --device and all place several workers (runs, trials, timed jobs) on
one machine, so the check of the flag, the name a run's tag and a bench line give the device, and the dealing
of workers over GPUs and CPU threads are made here once, the same for all of them.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from harness.errors import UserError


def pick_device(name: str | None = None) -> torch.device:
    """--device, checked here so that a typo or a missing GPU is one line before any run starts, not a CUDA
    traceback from inside the first one."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"--device {name}: this machine has no CUDA GPU that PyTorch can use (use --device cpu)")
        if device.index is not None and device.index >= n:
            raise UserError(f"--device {name}: expected cuda:0 to cuda:{n - 1} on this machine ({n} GPU(s))")
    return device


def _cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; elsewhere what `platform` knows, possibly nothing)."""
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), platform.processor())


def device_name(device: torch.device) -> str:
    """The one name of a device in every record that says where a figure was measured (a run's `device` tag, a
    bench line): the GPU's model and, on a machine with several, which one; the CPU's architecture and model
    with the threads this process trains on, since a CPU's throughput follows its thread count."""
    if device.type == "cuda":
        n = torch.cuda.device_count()
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{torch.cuda.get_device_name(device)}" + (f" (GPU {index} of {n})" if n > 1 else "")
    cpu = " ".join(part for part in dict.fromkeys((platform.machine(), _cpu_model())) if part)
    return f"cpu:{cpu} x{torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: a clock read on the host measures nothing of CUDA's work without it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_jobs(jobs: int) -> None:
    """--jobs of `run`, `table` and `bench`, checked before anything starts."""
    if jobs < 1:
        raise UserError(f"--jobs: expected a whole number of runs at a time, at least 1, got {jobs}")


def thread_share(jobs: int) -> int:
    """CPU threads for each of `jobs` workers: this process's threads (OMP_NUM_THREADS respected) split evenly."""
    return max(1, torch.get_num_threads() // jobs)


def worker_devices(device: torch.device, jobs: int, gpus: int) -> list[str]:
    """The device of each of `jobs` workers: dealt over the `gpus` GPUs when `device` is CUDA without an index
    (a worker is pinned for its life: a run's checkpoint, CUDA graphs and memory stay on one GPU), else all alike."""
    if device.type == "cuda" and device.index is None and gpus > 1:
        return [f"cuda:{k % gpus}" for k in range(jobs)]
    return [str(device)] * jobs
