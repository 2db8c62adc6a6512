"""`validate`: every spec named, read and resolved as `run` would, without training, MLflow or torch (the schema
and its registries are plain data), so checking a folder of YAML is instant.

Every spec named is read before anything runs, and a bad one stops the call: a user who names specs means all of
them (where `table` goes on without a bad spec among the defaults).
"""

from __future__ import annotations

from harness.core.families import FAMILIES
from harness.core.spec import RunSpec, collect_runs
from harness.errors import SpecError, UserError


def load_all(paths: list[str], overrides: list[str], budget: float) -> list[RunSpec]:
    """Every bad spec is named (one `error:` line each), so a folder of specs is fixed in one pass."""
    runs, errors, _ = collect_runs(paths, overrides, budget)
    if errors:
        raise SpecError(*errors)
    if not runs:
        raise UserError(f"{' '.join(paths)}: no spec files found (expected .yaml files)")
    return runs


def validate(specs: list[str], overrides: list[str] = (), budget: float = 1.0) -> int:
    for r in load_all(specs, overrides, budget):
        print(f"ok  {r.source_file}  {r.run_name}  {r.spec.model.arch}-{r.spec.model.depth}  {schedule_words(r)}, "
              f"batch {r.spec.batch_size}, augment {r.spec.data.augment}")
    return 0


def schedule_words(r: RunSpec) -> str:
    """The schedule as the run will follow it: its family and the fields that family reads (a plateau's patience,
    not milestones it never reads)."""
    s, family = r.spec.schedule, FAMILIES[r.spec.schedule.name]
    read = ([f"milestones {s.milestones}"] if family.milestones else []) + \
        ([f"patience {s.patience}"] if family.on_validation else [])
    return f"{s.total_iters} iters, {s.name}" + (f" ({', '.join(read)})" if read else "")


