"""A campaign file: one budget, the overrides every run shares, and the ordered list of specs and seeds (an entry
may set its own overrides and budget).

A campaign is a reproducible unit of work (`experiments/campaigns/*.yaml`, run by `table --campaign FILE`): the
file says exactly which runs it is, so a fresh machine reruns the same runs in the same order, and a store that
already holds them reports them as done. Each entry resolves as `run SPEC --budget B --set O... --set seeds=[S]`
would, so its runs keep the spec_hash those commands give them (the seeds list is not part of the hash, the seed
is); an entry's `set` and `budget` resolve as that command with them would. Unknown keys are refused, as in a spec:
a misspelt key must not quietly drop a run from the campaign.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.core.names import name_problem
from harness.core.spec import RunSpec, _first_error, _yaml, load_spec, resolve_runs
from harness.errors import SpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CampaignEntry(_Strict):
    """One line of a campaign: a spec and its seeds, and what this entry alone changes: `set` (its own
    `--set KEY=VALUE` overrides, after the campaign's: a variant is a line, not a copied spec) and `budget` (where
    its iterations differ: a batch-256 run at half the budget of a batch-128 one sees the same epochs). A variant
    (an entry with `set`) names itself: its runs' names and record files must not pass for the spec's own runs."""

    spec: str  # a spec file, relative to the working directory (the repository root)
    seeds: list[int] = Field(min_length=1)
    set: list[str] = []
    budget: float | None = Field(None, gt=0)
    name: str | None = None  # the variant's run name, in place of the spec file's stem

    @model_validator(mode="after")
    def _a_variant_names_itself(self):
        if self.set and self.name is None:
            raise ValueError(f"name: expected a name for this variant of {self.spec} (its set: {', '.join(self.set)} "
                             "makes other runs than the spec's own, and their records must say so)")
        if self.name is not None and name_problem(self.name):
            raise ValueError(f"name: {name_problem(self.name)}")
        return self


class Campaign(_Strict):
    description: str = ""
    budget: float = Field(gt=0)
    overrides: list[str] = []  # `--set KEY=VALUE` of every run, in order, before the entry's seeds
    runs: list[CampaignEntry] = Field(min_length=1)


def load_campaign(path: str | Path) -> Campaign:
    """The campaign file at `path`, or one line naming the file, the key and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: campaign file not found (expected a YAML file with budget, overrides and runs)")
    try:
        raw = _yaml(path.read_text())  # a key given twice is refused, as in a spec
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: not a valid YAML campaign file: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: <top level>: expected a mapping with budget, overrides and runs")
    try:
        return Campaign.model_validate(raw)
    except ValidationError as e:
        # An unknown key first: a misspelt `seed` is also a missing `seeds`, and the misspelling is the news.
        err = min(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
        if err["type"] == "extra_forbidden":  # spec.py's message would list a spec's keys, not a campaign's
            keys = sorted(CampaignEntry.model_fields if len(err["loc"]) > 1 else Campaign.model_fields)
            raise SpecError(f"{path}: {'.'.join(map(str, err['loc']))}: unknown key (expected one of: "
                            f"{', '.join(keys)})") from None
        raise SpecError(f"{path}: {_first_error(e)}") from None


def campaign_runs(path: str | Path, extra: list[str] = ()) -> list[RunSpec]:
    """Every run of the campaign at `path`, in the file's order; `extra` overrides follow the file's own."""
    camp = load_campaign(path)
    runs: list[RunSpec] = []
    for i, entry in enumerate(camp.runs):
        if not Path(entry.spec).is_file():
            raise SpecError(f"{path}: runs.{i}.spec: {entry.spec}: spec file not found (expected a path to a spec, "
                            "relative to the repository root)")
        try:
            spec = load_spec(entry.spec, [*camp.overrides, *entry.set, *extra, f"seeds={json.dumps(entry.seeds)}"])
            if entry.name is not None:
                spec = spec.model_copy(update={"name": entry.name, "description": f"{spec.description.rstrip('.')}. "
                                               f"This variant: {'; '.join(entry.set) or 'as the spec'}"})
            runs += resolve_runs(entry.spec, spec, entry.budget or camp.budget)
        except SpecError as e:
            raise SpecError(f"{path}: runs.{i}: {e}") from None
    return runs
