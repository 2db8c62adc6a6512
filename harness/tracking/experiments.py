"""Which MLflow experiment a run lives in: one per group, data set and budget.

MLflow's runs table, charts and dataset panel read one experiment at a time, and average or stretch whatever it
holds: a 32-iteration run on the 4k-image mini set beside a 4,000-iteration run on all of CIFAR-10 makes every chart
and every grouping by name lie. So a group's runs on one data file at one budget share an experiment, and the paper's
own setting (the full file, budget 1) keeps the group's plain name (`table6`), which is where a user looks first:
`table6 · cifar10-full.npz · budget 0.0625` is the same group at 1/16 of the paper's length. Each experiment says its
group, data and budget in its tags, so the reports and `results export` find a group's runs across its experiments;
an experiment named as the group before this convention (all its budgets at once) is still one of them.
"""

from __future__ import annotations

from harness.core.data_tag import FULL_TRAIN, DataTag
from harness.tracking import store as tracking
from harness.tracking.inputs import experiment_note

GROUP = "group"  # the experiment tag naming its group


def experiment_name(group: str, data: DataTag, budget: float) -> str:
    """The group's name for its runs on all of CIFAR-10 (the official test set, 50,000 training images with any
    validation split) at the paper's budget; else the group, the data file and the budget."""
    if budget == 1.0 and data.official and data.train + data.val == FULL_TRAIN:
        return group
    return f"{group} · {data.source} · budget {budget:g}"


def run_experiment(c, group: str, data: DataTag, budget: float) -> str:
    """The experiment of the group's runs on this data at this budget, made on first use."""
    name = experiment_name(group, data, budget)
    note = experiment_note(group)
    if name != group:
        note = f"{note}\n\nThis experiment: {data.source} at budget {budget:g} ({budget * 64000:,.0f} of the paper's " \
               "64,000 iterations); the group's other data and budgets are experiments of their own."
    folder = group if name == group else f"{group}/{data.source}-b{budget:g}"
    return tracking.experiment_id(c, name, note, {GROUP: group, "data": data.source, "budget": f"{budget:g}"},
                                  folder)


def group_experiments(c, group: str) -> list[str]:
    """The ids of every experiment of the group: those tagged with it, and one named as it."""
    ids = [e.experiment_id for e in c.search_experiments(filter_string=f"tags.{GROUP} = '{group}'")]
    plain = c.get_experiment_by_name(group)
    if plain is not None and plain.experiment_id not in ids:
        ids.append(plain.experiment_id)
    return ids


def group_of(exp) -> str:
    """An experiment's group: its tag, or its name where it predates the tag."""
    return exp.tags.get(GROUP, exp.name)


def find_group_run(c, group: str, spec_hash: str):
    """The newest run of this resolved spec in any experiment of its group, or None."""
    return tracking.find_run(c, group_experiments(c, group), spec_hash)
