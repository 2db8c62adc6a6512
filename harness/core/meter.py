"""What a run's training shows while it goes: the meter summed on the device between evaluation points (a step adds to
it without a host sync) and the run's progress bar.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from tqdm import tqdm

from harness.core.schedule import WARMUP_CHECK_EVERY


class Diverged(RuntimeError):
    """The loss became NaN or inf: the run ends as FAILED with tag failure=diverged."""


class Meter:
    """Training loss and error summed on the device between evaluation points, and the wrong answers of the
    current warm-up window: a step adds to them without a host sync, the host reads them at evaluation points
    and at warm-up checks only."""

    def __init__(self, device: torch.device, batch_size: int):
        self.bs = batch_size
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.wrong = torch.zeros((), device=device, dtype=torch.int64)
        self.window = torch.zeros((), device=device, dtype=torch.int64)
        self.reset()

    def reset(self) -> None:
        self.loss.zero_()
        self.wrong.zero_()
        self.seen = 0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, wrong: torch.Tensor, warming: bool) -> None:
        self.loss += loss.double()
        self.wrong += wrong
        self.seen += self.bs
        if warming:
            self.window += wrong

    def window_error(self, it: int) -> float:
        """The training error (%) of the warm-up window ending at iteration `it`; starts the next window."""
        err = 100.0 * self.window.item() / (WARMUP_CHECK_EVERY * self.bs)
        self.window.zero_()
        if not math.isfinite(self.loss.item()):
            raise Diverged(f"loss is not finite at iteration {it} (during warm-up)")
        return err

    def read(self, it: int) -> tuple[float, float]:
        """(mean training loss since the last evaluation point, seconds of training since then)."""
        train_loss = self.loss.item() / max(self.seen // self.bs, 1)
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss is {train_loss} at iteration {it}: the run diverged")
        return train_loss, time.perf_counter() - self.t0

    def train_error(self) -> float:
        """Training error (%) since the last evaluation point."""
        return 100.0 * self.wrong.item() / max(self.seen, 1)


class Progress:
    """The run's tqdm bar: a tick per iteration, and the latest numbers as its postfix at evaluation points."""

    def __init__(self, run_name: str, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, desc=run_name, unit="it", disable=not enabled,
                        dynamic_ncols=True, leave=False)

    def tick(self) -> None:
        self.bar.update(1)

    def show(self, m: dict[str, float]) -> None:
        err = {"val_err": f"{m['val_error']:.1f}"} if "val_error" in m else {"test_err": f"{m['test_error']:.1f}"}
        self.bar.set_postfix(loss=f"{m['train_loss']:.3f}", lr=f"{m['lr']:.3g}", **err,
                             img_s=f"{m['images_per_s']:.0f}")

    def evaluating(self) -> None:
        """Said on the bar while an evaluation point measures its splits, which takes a while with no tick."""
        self.bar.set_postfix_str("evaluating val/test ...", refresh=True)

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
