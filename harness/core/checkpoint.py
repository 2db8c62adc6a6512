"""The checkpoint a killed run resumes from, kept so that one damaged file never leaves a run that cannot finish.

`X.pt` is written to a temporary file, read back, and only then made the checkpoint; the one it replaces stays as
`X.prev.pt` (a hard link made before the swap, so `X.pt` exists at every moment: the old one or the new one).
Resuming reads `X.pt`; where that is damaged (truncated, not a torch archive, or content that does not fit the
run), `X.prev.pt`; where both are, the run starts again from iteration 0. Each fall-back is a line naming the
file and the damage, handed to the caller too (the sink tags the MLflow run with it).

A checkpoint is a file a user may be handed, or that sits in a cluster's shared folder, so it is read with
`weights_only=True`: tensors, plain containers and numbers, nothing that unpickling would construct (and could run
code through). All the state is of those kinds (the generator's state is a uint8 tensor, the schedule's plain
numbers); a file that needs more, a crafted one or one written by code that stored objects, is refused as damage.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class LoopState:
    """Where the loop is in the data: with the weights, the schedule and the RNGs, what a bit-exact resume needs."""

    it: int = 0
    perm: torch.Tensor | None = None
    pos: int = 0
    train_seconds: float = 0.0


def prev_path(path: Path) -> Path:
    """X.pt -> X.prev.pt: the checkpoint before the current one."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def remove(path: Path) -> None:
    """The checkpoint and the one before it (a finished run, or a fresh start, keeps neither)."""
    path.unlink(missing_ok=True)
    prev_path(path).unlink(missing_ok=True)


def save_checkpoint(path: Path, model, opt, sched, gen: torch.Generator, st: LoopState) -> None:
    """Weights, optimizer, schedule, both RNGs and the loop's place: all that the next iteration depends on. The
    new file replaces the checkpoint only once it reads back; the replaced one becomes X.prev.pt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": sched.state_dict(),
                "generator": gen.get_state(), "cpu_rng": torch.get_rng_state(), "loop": st.__dict__}, tmp)
    torch.load(tmp, map_location="cpu", weights_only=True)  # verified: a write cut short raises here
    if path.exists():
        prev, link = prev_path(path), prev_path(path).with_suffix(f".tmp{os.getpid()}")
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)
        except OSError:  # a file system without hard links: a copy, still made before the swap
            shutil.copyfile(path, link)
        os.replace(link, prev)
    os.replace(tmp, path)  # atomic: a kill leaves the old checkpoint or the new one, never half of one


LEGACY_LOOP_KEYS = ("warmup_done", "plateau_lr", "best_val_loss", "best_val_iter")


def _schedule_state(ck: dict) -> dict:
    """The schedule's state from either layout a checkpoint has: its own "schedule" entry, or LEGACY_LOOP_KEYS in
    the loop's dict beside torch's ReduceLROnPlateau state, so that a run killed under either resumes."""
    if "schedule" in ck:
        return ck["schedule"]
    plateau = ck.get("plateau") or {}
    state = {k: ck["loop"].pop(k) for k in LEGACY_LOOP_KEYS}
    state.update(plateau_best=plateau.get("best", math.inf), plateau_bad=plateau.get("num_bad_epochs", 0))
    return state


def load_checkpoint(path: Path, model, opt, sched, gen: torch.Generator) -> LoopState:
    """Puts model, optimizer, schedule and RNGs back as save_checkpoint found them; returns the loop's place."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(_schedule_state(ck))
    gen.set_state(ck["generator"])
    torch.set_rng_state(ck["cpu_rng"])
    st = LoopState(**ck["loop"])
    if st.perm is not None:
        st.perm = st.perm.to(gen.device)
    return st


def damage(path: Path, e: Exception) -> str:
    """What is wrong with a checkpoint that would not load, in words."""
    size = path.stat().st_size if path.exists() else 0
    detail = (str(e).splitlines() or [""])[0][:160]
    unpickler = re.search(r"WeightsUnpickler error: ([^.\n]*)", str(e))
    if unpickler:  # torch's advice to load with weights_only=False is exactly what is refused here
        detail = unpickler.group(1)[:160]
    if size == 0:
        what = "empty"
    elif isinstance(e, pickle.UnpicklingError):
        what = "refused: it holds objects beyond tensors, containers and numbers, and loading them could run code"
    elif isinstance(e, (EOFError, RuntimeError)) and ("zip archive" in detail or isinstance(e, EOFError)):
        what = "truncated or not a torch.save archive"
    else:
        what = "content that does not fit this run"
    return f"{path}: damaged checkpoint ({size:,} bytes, {what}; {type(e).__name__}: {detail})"


def restore(path: Path, load: Callable[[Path], LoopState],
            on_restart: Callable[[str], None] | None = None) -> LoopState | None:
    """The loop's place from X.pt, or from X.prev.pt where X.pt is damaged (it then becomes X.pt, so the next save
    keeps it as the previous one); None where neither loads: the caller starts afresh from iteration 0, and the
    damaged files are gone. No X.pt is a fresh start (a leftover X.prev.pt belongs to no run and is removed)."""
    if not path.exists():
        prev_path(path).unlink(missing_ok=True)
        return LoopState()
    problems = []
    for candidate in (path, prev_path(path)):
        if not candidate.exists():
            continue
        try:
            st = load(candidate)
        except Exception as e:  # noqa: BLE001 - whatever stops a file from loading is damage to report
            problems.append(damage(candidate, e))
            print(problems[-1], file=sys.stderr, flush=True)
            continue
        if candidate != path:
            os.replace(candidate, path)
            _said(f"{path.name}: resumed from {candidate.name} at iteration {st.it} ({problems[0]})", on_restart)
        return st
    remove(path)
    _said(f"{path.name}: restarted from iteration 0, no checkpoint loads ({'; '.join(problems)})", on_restart)
    return None


def _said(line: str, on_restart: Callable[[str], None] | None) -> None:
    print(line, file=sys.stderr, flush=True)
    if on_restart is not None:
        on_restart(line)
