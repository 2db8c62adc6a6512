"""The fastest path for a batch on this machine, as `bench --json` measured it here (the lines kept in
reports/bench/*.jsonl): how many runs at once, torch.compile or not, channels_last or not.

The fastest path is a fact of the machine more than of the net: on the 2-core AMD EPYC that bench measured, two
one-thread runs at once beat one run on both cores, and on the 2-core Intel Xeon one compiled channels_last run on
both cores beats two at once (reports/bench.md). So a campaign's make target asks for `--fastest`, and the batch
looks up the bench lines of this very device (CPU model and thread count, harness.core.devices.device_name) for
the net most of its runs train; where none was measured, it trains as given and says so. The path is not part of a
run's hash (harness.core.spec_hash.PATH_FIELDS), so a run keeps its identity, and its record says which path trained
it.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.core.archs import ARCHS
from harness.core.devices import device_name
from harness.core.spec import ModelSpec, RunSpec, Spec

# bench's variants of our loop (harness.bench.timing) by their path: (torch.compile, channels_last)
VARIANT_PATHS = {"ours": (False, False), "ours_channels_last": (False, True), "ours_compiled": (True, False),
                 "ours_compiled_channels_last": (True, True)}


@dataclass(frozen=True)
class TrainPath:
    """One path as a bench line measured it: `jobs` runs at once, each with its share of the threads."""

    jobs: int
    compile: bool
    channels_last: bool
    images_per_s: float  # all runs together
    source: str  # the bench file that measured it

    def words(self) -> str:
        how = " + ".join(w for w, on in (("torch.compile", self.compile), ("channels_last", self.channels_last)) if on)
        runs = "one run at a time" if self.jobs == 1 else f"{self.jobs} runs at once"
        return f"{how or 'eager, contiguous'}, {runs}"


def bench_name(model: ModelSpec) -> str:
    """The net as `bench --model` names it: resnet32, plain20, torchvision_resnet34."""
    return model.arch if ARCHS[model.arch].depth is not None else f"{model.arch}{model.depth}"


def main_net(runs: list[RunSpec]) -> tuple[str, int]:
    """The (net, batch size) most of the runs train, the first of them on a tie: the one whose path counts."""
    counts = Counter((bench_name(r.spec.model), r.spec.batch_size) for r in runs)
    return counts.most_common(1)[0][0]


def measured_paths(bench_dir: Path, device: str, net: str, batch_size: int) -> list[TrainPath]:
    """Every path of our loop that a bench line of `device` measured for `net` at `batch_size`."""
    paths = []
    for file in sorted(bench_dir.glob("*.jsonl")):
        for line in file.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if (row.get("device"), row.get("model"), row.get("batch_size")) != (device, net, batch_size):
                continue
            for name, v in row.get("variants", {}).items():
                jobs = int(v.get("jobs") or 1)
                base = name.removesuffix(f"_x{jobs}") if jobs > 1 else name
                if base in VARIANT_PATHS and v.get("images_per_s"):
                    paths.append(TrainPath(jobs, *VARIANT_PATHS[base], float(v["images_per_s"]), file.name))
    return paths


def fastest(bench_dir: Path, device: str, runs: list[RunSpec]) -> tuple[TrainPath | None, str]:
    """The fastest measured path for the runs' main net on `device`, and a line saying what was chosen from what."""
    net, batch = main_net(runs)
    paths = measured_paths(bench_dir, device, net, batch)
    if not paths:
        return None, (f"path: no bench line of {device} for {net} at batch {batch} in {bench_dir}; training as "
                      f"given (`python -m harness bench --model {net} --batch-size {batch} --compile --jobs 2 --json` "
                      "measures one)")
    best = max(paths, key=lambda p: p.images_per_s)
    other = max((p for p in paths if p.jobs != best.jobs), key=lambda p: p.images_per_s, default=None)
    against = f"; the fastest with {other.jobs} run(s) at once: {other.images_per_s:.0f}" if other else ""
    return best, (f"path: {best.words()}, the fastest bench measured for {net} at batch {batch} on {device} "
                  f"({best.images_per_s:.0f} img/s{against}; {best.source})")


def chosen(bench_dir: Path, device: torch.device, runs: list[RunSpec], cluster: bool = False) -> TrainPath | None:
    """--fastest for `run`, `table` and `tune` alike: the path for `runs` on this CPU, said in one line; on a GPU or
    a cluster None (bench's lines there are not of one machine's cores), and the runs train as given."""
    if device.type != "cpu" or cluster:
        print("path: --fastest chooses among the paths of one CPU; training as given", file=sys.stderr)
        return None
    path, line = fastest(bench_dir, device_name(device), runs)
    print(line, file=sys.stderr, flush=True)
    return path


def on_path(spec: Spec, path: TrainPath) -> Spec:
    """The spec with the path's compile and channels_last: the same run (same hash), computed another way."""
    return spec.model_copy(update={"compile": path.compile, "channels_last": path.channels_last})
