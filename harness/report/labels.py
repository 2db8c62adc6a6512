"""What a campaign's numbers are, in words: its data, split and budget, as a title and as a row's label.

A number read without its data and budget is misread: an error measured after 2,000 iterations sits beside the
paper's 64,000-iteration figure only under a label saying so, and a row trained on 45k of the 50k images says so
where the others train on all of them. The words come from the runs' own `data` tags, never from a typed name.
"""

from __future__ import annotations

from fractions import Fraction

from harness.core.data_tag import DataTag


def budget_words(budget: float) -> str:
    """1/32 for 0.03125 (a fraction of the paper's 64k iterations is read as one), else the number itself."""
    if budget >= 1:
        return f"{budget:g}"
    frac = Fraction(budget).limit_denominator(1 << 20)
    return f"1/{frac.denominator}" if frac.numerator == 1 and float(frac) == budget else f"{budget:g}"


def budget_label(budget: float) -> str:
    if budget == 1.0:
        return "budget 1 (the paper's budget)"
    return f"budget {budget_words(budget)} ({budget * 64000:,.0f} iterations) — not the paper's budget"


def data_words(tag: str) -> str:
    """A run's `data` tag ("cifar10-full.npz train=50000 val=0 test=10000 (official test set)") in words."""
    t = DataTag.read(tag)
    name, train, val, test = t.source or "?", t.train, t.val, t.test
    if t.official and train + val == 50000:
        images = "all 50k training images" if not val else f"{train // 1000}k/{val // 1000}k split of the 50k " \
                                                            "training images"
        return f"CIFAR-10, {images}, official test set"
    split = f"{train}/{val}" if val else f"{train}"
    return f"{name}, {split} training images, {test} held-out images as test set (not the official test set)"


def main_data(tags: list[str]) -> str:
    """The `data` tag most runs trained on (all 50k images where a campaign has as many of both)."""
    return max(sorted(set(tags)), key=lambda t: (tags.count(t), not DataTag.read(t).val))


def runs(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def campaign_label(tags: list[str], budget: float) -> str:
    """The campaign's name in words, covering every run it names: their data and the budget, e.g. "CIFAR-10, all
    50k training images, official test set, budget 1/32 (2,000 iterations) — not the paper's budget". Where the
    runs trained on different data or splits, each is named with its count of runs, the most common first: a
    title over rows it does not describe misleads every reader of them."""
    tags = [t for t in tags if t]
    if not tags:
        return budget_label(budget)
    kinds = sorted(set(tags), key=lambda t: (-tags.count(t), t != main_data(tags), t))
    if len(kinds) == 1:
        return f"{data_words(kinds[0])}, {budget_label(budget)}"
    words = [data_words(t) for t in kinds]
    if all(w.startswith("CIFAR-10, ") and w.endswith(", official test set") for w in words):
        parts = [f"{w.removeprefix('CIFAR-10, ').removesuffix(', official test set')} ({runs(tags.count(t))})"
                 for w, t in zip(words, kinds, strict=True)]
        return f"CIFAR-10, official test set: {' and '.join(parts)}; {budget_label(budget)}"
    parts = [f"{w} ({runs(tags.count(t))})" for w, t in zip(words, kinds, strict=True)]
    return f"{'; '.join(parts)}; {budget_label(budget)}"


def row_label(tag: str, campaign_tags: list[str], budget: float) -> str:
    """A row's data and budget, briefly (its test set is the title's); in bold where its split is not that of the
    campaign's title (the ablations' 45k/5k beside Table 6's all 50k)."""
    words = data_words(tag)
    short = words.split(", ")[1] if words.startswith("CIFAR-10, ") else ", ".join(words.split(", ")[:2])
    short = f"{short}, budget {budget_words(budget)}"
    return short if data_words(main_data([t for t in campaign_tags if t] or [tag])) == words else f"**{short}**"
