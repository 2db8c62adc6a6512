"""`diagnose`: which of a reproduction's choices cost how much, from the committed records.

The user's setup is a spec (or `--set` overrides on the paper's ResNet-32 spec). Every factor in which it departs
from the paper's recipe (harness.core.factors) gets the cost the records measure for that very change (a pair of
settings that differ in it alone, harness.report.evidence), with its seed noise, data and budget, or "not
measured"; the unmeasured ones, and those measured only on another recipe, get a campaign file that would measure
them on the paper's, and its time on this machine (harness.report.to_measure). Where several departures are
measured together, the sum of one-factor costs is set beside the combination's, since factors interact.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.core import factors as F
from harness.core.spec import load_spec, resolve_runs
from harness.report.evidence import Pair, Setting, combinations, load_settings, one_factor, taking_together
from harness.report.labels import budget_words
from harness.report.to_measure import CPU_JOBS, Cost, campaign_for, cost_here, why_recipe, write_campaign


@dataclass(frozen=True)
class DiagnoseOptions:
    spec: Path | None  # None: the paper's spec with `overrides`
    overrides: list[str]
    paper: Path
    base: Path
    results: Path
    campaign: Path | None  # where the campaign for unmeasured factors goes (None: build/diagnose/<name>.yaml)
    budget: float | None  # that campaign's budget (None: the why-campaign's)
    seeds: list[int]
    as_json: bool


def _setting_words(s: Setting) -> dict:
    what = "CIFAR-10 test error" if s.data.cifar10_test_error(s.budget) else \
        f"test error on {'the official test set' if s.data.official else 'its test split'}"
    return {"run": s.ref, "n": s.s.n, "test_error": round(s.s.mean, 2),
            "std": None if math.isnan(s.s.std) else round(s.s.std, 2),
            "data": f"{s.data.source}, {s.data.train:,} training images", "budget": s.budget,
            "iterations": s.spec.schedule.total_iters, "measured": what,
            "records": sorted(s.runs.record)}


def _pair_words(p: Pair) -> dict:
    return {"factors": list(p.factors), "cost": round(p.delta, 2), "noise": p.noise,
            "background": p.background, "paper_side": _setting_words(p.before), "your_side": _setting_words(p.after)}


def _factor_row(f: str, paper: dict, yours: dict, pairs: list[Pair]) -> dict:
    keys = F.differing_keys(paper[f], yours[f])
    row = {"factor": f, "paper": F.words(paper[f], keys), "yours": F.words(yours[f], keys)}
    if not pairs:
        return {**row, "measured": False}
    return {**row, "measured": True, **_pair_words(pairs[0]), "other_measurements": [
        {"cost": round(p.delta, 2), "run": p.after.ref, "against": p.before.ref, "budget": p.before.budget}
        for p in pairs[1:]]}


def _interaction(rows: list[dict], together: list, combos: list[Pair]) -> dict | None:
    """The measured combination of the most departures, or the run that takes them with nothing to compare."""
    if not combos:
        if not together:
            return None
        taken, a = max(together, key=lambda t: (len(t[0]), t[1].s.n))
        return {"factors": list(taken), "your_side": _setting_words(a), "paper_side": None}
    best = combos[0]
    alone = [r["cost"] for r in rows if r["factor"] in best.factors and r["measured"]]
    split = best.before.values["split"] != best.after.values["split"]
    return {**_pair_words(best), "sum_of_one_factor_costs": round(sum(alone), 2) if len(alone) == len(
        best.factors) else None, "split_differs": split}


def _evidence(settings: list[Setting]) -> tuple[str, tuple[int, int]]:
    """The data most records trained on (its id and its train pool and test sizes): the campaign's runs are
    hashed and timed on it."""
    if not settings:
        return "", (50000, 10000)
    count = Counter(s.data_id for s in settings for _ in range(s.s.n))
    top = next(s for s in settings if s.data_id == count.most_common(1)[0][0])
    return top.data_id, (top.data.train + top.data.val, top.data.test)


def diagnose(o: DiagnoseOptions) -> int:
    source = o.spec or o.paper
    yours_spec = load_spec(source, o.overrides)
    resolve_runs(source, yours_spec, 1.0)  # what `validate` refuses is refused here, in its words
    paper_spec = load_spec(o.paper)
    paper, yours = F.values_of(paper_spec), F.values_of(yours_spec)
    settings, skipped = load_settings(o.results)
    departing = F.departures(paper, yours)
    together = taking_together(settings, departing, paper, yours)
    rows = [_factor_row(f, paper, yours, one_factor(settings, f, paper, yours)) for f in departing]
    title = f"{source}" + (f" with {' '.join(o.overrides)}" if o.overrides else "")
    out = {"spec": str(source), "overrides": o.overrides, "paper": str(o.paper),
           "records": int(sum(len(s.runs) for s in settings)), "skipped_records": skipped, "factors": rows,
           "combination": _interaction(rows, together, combinations(together, settings, paper)), "campaign": None}
    unmeasured = [r["factor"] for r in rows if _to_measure(r)]
    if unmeasured:
        recipe = why_recipe(o.paper, o.base, o.budget, o.seeds)
        path = o.campaign or Path("build/diagnose") / f"{yours_spec.name or 'spec'}.yaml"
        runs = write_campaign(path, campaign_for(unmeasured, yours_spec, recipe, title))
        data_id, pool = _evidence(settings)
        out["campaign"] = _campaign_words(path, recipe.budget, cost_here(runs, settings, data_id, pool), len(runs))
    print(json.dumps(out, indent=2) if o.as_json else "\n".join(_text(title, out)))
    for line in skipped:
        print(f"diagnose: {line}", file=sys.stderr)
    return 0


def _to_measure(row: dict) -> bool:
    """Unmeasured, or measured only on another recipe than the paper's: a cost measured there is that recipe's."""
    return not row["measured"] or row["background"] > 0


def _campaign_words(path: Path, budget: float, cost: Cost, total: int) -> dict:
    hours = None if cost.seconds is None else round(cost.seconds / 3600, 1)
    return {"path": str(path), "budget": budget, "runs": total, "runs_to_train": cost.runs,
            "command": f"python -m harness table --campaign {path} --data ../shared/data/cifar10-full.npz "
                       f"--jobs {CPU_JOBS} --publish", "cpu_hours": hours,
            "wall_hours": None if hours is None else round(hours / CPU_JOBS, 1), "rate_device": cost.device,
            "rate_from_records": cost.rate_from, "rate_of_other_nets": cost.other_nets}


def _text(title: str, out: dict) -> list[str]:
    rows = out["factors"]
    lines = [f"diagnose: {title} against the paper's recipe ({out['paper']}), from {out['records']} records", ""]
    if not rows:
        return [*lines, "It departs from the paper's recipe in no factor: any gap is the budget's, the data's or "
                        "seed noise."]
    lines += [*_table([{"factor": r["factor"], "paper": r["paper"], "yours": r["yours"],
                        "cost (points)": f"{r['cost']:+.2f}" if r["measured"] else "not measured",
                        "n": f"{r['your_side']['n']} vs {r['paper_side']['n']}" if r["measured"] else "",
                        "budget": budget_words(r["paper_side"]["budget"]) if r["measured"] else ""} for r in rows])]
    if any(r["measured"] for r in rows):
        lines.append("")
    for r in (r for r in rows if r["measured"]):
        a, b = r["your_side"], r["paper_side"]
        lines.append(f"- {r['factor']}: {a['run']} {a['test_error']:.2f} % against {b['run']} {b['test_error']:.2f} %"
                     f" ({a['measured']}, {a['data']}, budget {budget_words(a['budget'])}: {a['iterations']:,} "
                     f"iterations; {_background(r['background'])}); {r['noise']}; records: "
                     f"{', '.join(a['records'] + b['records'])}")
        for m in r["other_measurements"]:
            lines.append(f"  also {m['cost']:+.2f} ({m['run']} against {m['against']}, budget "
                         f"{budget_words(m['budget'])})")
    lines += _combination_text(out["combination"], len(rows))
    if c := out["campaign"]:
        when = "no record measured a rate on this machine" if c["cpu_hours"] is None else \
            f"about {c['cpu_hours']} h of training here, {c['wall_hours']} h at {CPU_JOBS} at once (the median rate " \
            f"of {c['rate_from_records']} records on {c['rate_device']}" + \
            ("; some of its nets have no record here and take other nets' rate, which a CPU may run faster or "
             "slower per FLOP)" if c["rate_of_other_nets"] else ")")
        missing = [r["factor"] for r in rows if _to_measure(r)]
        lines += ["", f"Not measured on the paper's recipe: {', '.join(missing)}. The campaign that measures "
                      f"{'them' if len(missing) > 1 else 'it'}: {c['path']} ({c['runs']} runs at budget "
                      f"{budget_words(c['budget'])}, "
                      f"{c['runs_to_train']} not in the records yet; {when}):", f"  {c['command']}"]
    return lines


def _background(n: int) -> str:
    """Where a pair measured its factor: a cost measured on another recipe than the paper's is that recipe's."""
    return "the rest the paper's recipe" if n == 0 else \
        f"on a recipe {n} other factor{'s' if n > 1 else ''} away from the paper's"


def _table(rows: list[dict], widest: int = 48) -> list[str]:
    """Left-aligned columns for a terminal; a cell over `widest` characters is cut with an ellipsis (--json has
    it whole)."""
    cells = [[c if len(c) <= widest else c[:widest - 1] + "…" for c in map(str, r.values())] for r in rows]
    head = list(rows[0])
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
    return ["  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [head, *cells]]


def _combination_text(combo: dict | None, departing: int) -> list[str]:
    if departing < 2:
        return []
    lines = ["", "Factors interact: the sum of one-factor costs is not the whole gap."]
    if combo is None:
        return [*lines[:-1], lines[-1] + " No record takes two or more of these departures together."]
    a, b = combo["your_side"], combo["paper_side"]
    if b is None:
        return [*lines, f"- {a['run']} takes {len(combo['factors'])} of them together ({', '.join(combo['factors'])})"
                        f": {a['test_error']:.2f} % (n={a['n']}, {a['data']}, budget {budget_words(a['budget'])}: "
                        f"{a['iterations']:,} iterations); no run of the paper's recipe on that data at the same "
                        "images seen is in the records to set it against."]
    total = combo["sum_of_one_factor_costs"]
    lines.append(f"- Measured together ({', '.join(combo['factors'])}): {a['run']} {a['test_error']:.2f} % against "
                 f"{b['run']} {b['test_error']:.2f} %, {combo['cost']:+.2f} points ({combo['noise']}), at "
                 f"{a['iterations']:,} and {b['iterations']:,} iterations (the same images seen), budgets "
                 f"{budget_words(a['budget'])} and {budget_words(b['budget'])}"
                 + ("; their splits differ" if combo["split_differs"] else "")
                 + (f"; the one-factor costs add up to {total:+.2f}" if total is not None else
                    "; not every one of them is measured alone"))
    return lines
