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
from typing import Annotated

import yaml
from pydantic import AfterValidator, Field, ValidationError, model_validator

from harness.core.names import name_problem
from harness.core.spec import RunSpec, load_spec, resolve_runs
from harness.core.spec_file import first_error, parse_yaml
from harness.core.strict import Strict
from harness.errors import SpecError


class CampaignEntry(Strict):
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


def _run_ref(ref: str) -> str:
    """`group/name`: a run of the campaign by its group (the spec's folder) and name (the spec's or the variant's)."""
    parts = ref.split("/")
    if len(parts) != 2 or any(name_problem(p) for p in parts):
        raise ValueError(f"expected group/name (e.g. ablations/baseline), got {ref!r}")
    return ref


RunRef = Annotated[str, AfterValidator(_run_ref)]


class WhyPlan(Strict):
    """What a why-campaign's page compares (harness.report.why): its runs named `group/name`, each a row of the
    campaign, and the file of the failed reproduction's printed figures that its stand-ins are set against."""

    log: str  # a YAML file of the log's printed figures (experiments/seedlog/log.yaml), relative to the root
    baseline: RunRef  # the paper's recipe on the paper's net at the campaign's budget
    log_setup: RunRef  # the log's net and recipe together, as its evidence reads them
    augmentation: list[RunRef] = Field(min_length=2)  # the log's setup under each augmentation, none to crop_flip
    net: RunRef  # the log's net on the paper's recipe
    recipe: RunRef  # the log's recipe on the paper's net
    factors: list[RunRef] = []  # one factor each away from the baseline


class Campaign(Strict):
    description: str = ""
    budget: float = Field(gt=0)
    overrides: list[str] = []  # `--set KEY=VALUE` of every run, in order, before the entry's seeds
    runs: list[CampaignEntry] = Field(min_length=1)
    why: WhyPlan | None = None  # a why page (reports/<campaign>/why.md) and what it compares

    @model_validator(mode="after")
    def _the_why_names_runs_of_this_campaign(self):
        """A part of the why page that names no run of the campaign would read "not trained yet" forever."""
        if self.why is None:
            return self
        have = {f"{Path(e.spec).parent.name}/{e.name or Path(e.spec).stem}" for e in self.runs}
        plan = self.why
        for key in ("baseline", "log_setup", "augmentation", "net", "recipe", "factors"):
            refs = getattr(plan, key)
            for ref in refs if isinstance(refs, list) else [refs]:
                if ref not in have:
                    raise ValueError(f"why.{key}: {ref} is no run of this campaign (expected one of: "
                                     f"{', '.join(sorted(have))})")
        return self


def load_campaign(path: str | Path) -> Campaign:
    """The campaign file at `path`, or one line naming the file, the key and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: campaign file not found (expected a YAML file with budget, overrides and runs)")
    try:
        raw = parse_yaml(path.read_text())  # a key given twice is refused, as in a spec
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
            section = {"runs": CampaignEntry, "why": WhyPlan}.get(err["loc"][0]) if len(err["loc"]) > 1 else None
            keys = sorted((section or Campaign).model_fields)
            raise SpecError(f"{path}: {'.'.join(map(str, err['loc']))}: unknown key (expected one of: "
                            f"{', '.join(keys)})") from None
        raise SpecError(f"{path}: {first_error(e)}") from None


def campaign_runs(path: str | Path, extra: list[str] = (), root: Path = Path()) -> list[RunSpec]:
    """Every run of the campaign at `path`, in the file's order; `extra` overrides follow the file's own. The specs'
    paths are relative to `root` (the repository root: a report run elsewhere reads the checkout's)."""
    camp = load_campaign(path)
    runs: list[RunSpec] = []
    for i, entry in enumerate(camp.runs):
        if not (root / entry.spec).is_file():
            raise SpecError(f"{path}: runs.{i}.spec: {entry.spec}: spec file not found (expected a path to a spec, "
                            "relative to the repository root)")
        try:
            spec = load_spec(root / entry.spec, [*camp.overrides, *entry.set, *extra,
                                                 f"seeds={json.dumps(entry.seeds)}"])
            if entry.name is not None:
                spec = spec.model_copy(update={"name": entry.name, "description": f"{spec.description.rstrip('.')}. "
                                               f"This variant: {'; '.join(entry.set) or 'as the spec'}"})
            runs += resolve_runs(entry.spec, spec, entry.budget or camp.budget)  # named by the relative path
        except SpecError as e:
            raise SpecError(f"{path}: runs.{i}: {e}") from None
    return runs
