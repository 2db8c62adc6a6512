"""`run`, `validate` and `import`: the specs a user names, checked, trained, or brought home from `run --offline`.

Every spec named is read before anything runs, and a bad one stops the call: a user who names specs means all of
them (where `table` goes on without a bad spec among the defaults).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from harness.batch.dispatch import Told, run_batch
from harness.batch.options import BatchOptions
from harness.core.spec import load_specs
from harness.core.spec_hash import hashed
from harness.errors import UserError
from harness.run.validate import load_all
from harness.tracking.importing import import_record
from harness.tracking.status import summary


def run(specs: list[str], o: BatchOptions, overrides: list[str] = (), budget: float = 1.0) -> int:
    """Exit code 0 when every run finished (now or before), 1 when one diverged or failed."""
    runs = load_all(specs, overrides, budget)  # every spec is checked before anything runs
    say_when_a_variant_keeps_the_name(specs, overrides)
    batch = run_batch(runs, o, Told(label=lambda r: f"{r.run_name} ({r.source_file})"))
    return 0 if batch.all_done else 1


NAMING_KEYS = ("seeds", "name", "description")  # overrides that leave a spec's runs its own


def say_when_a_variant_keeps_the_name(specs: list[str], overrides: list[str]) -> None:
    """`--set` that makes other runs than a spec's own keeps the spec's name (a run's name is its record file's and
    a campaign's reference to it): the runs table then shows two runs of one name, told apart by their params and
    spec_hash only. One line says so and how to name the variant (`--set name=NAME`, as a campaign entry's
    `name:`). The specs are compared as written, before the budget scales them (a spec may need its overrides to
    fit a small budget)."""
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    if not overrides or "name" in keys:
        return
    own = {path: hashed(spec) for path, spec in load_specs(specs, [o for o, k in zip(overrides, keys, strict=True)
                                                                   if k in NAMING_KEYS])[0]}
    changed = sorted({spec.name or path.stem for path, spec in load_specs(specs, overrides)[0]
                      if path in own and own[path] != hashed(spec)})
    if changed:
        print(f"run: --set {' '.join(o for o, k in zip(overrides, keys, strict=True) if k not in NAMING_KEYS)} "
              f"makes other runs than the spec's own, under its name ({', '.join(changed)}; MLflow and the records "
              "tell them apart by params and spec_hash); `--set name=NAME` names the variant", file=sys.stderr)


def import_records(paths: list[str]) -> int:
    """Log the records of `run --offline` (record.json files, or folders holding them) into the MLflow store."""
    records = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder (expected record.json files from `run --offline`)")
        records += [p] if p.is_file() else sorted(p.rglob("record.json"))
    if not records:
        raise UserError(f"{' '.join(paths)}: no record.json found (expected the folder given to run --offline)")
    counts = Counter(import_record(rec) for rec in records)
    print(f"{len(records)} records: {summary(counts)}", file=sys.stderr)
    return 0
