"""`search: {sampler: grid}`: the space as a grid of points, checked and counted.

A grid runs every combination of the searched knobs' values: a choice's values, an integer
range's integers (every `step`-th from low), a float range's values from low in steps of
`step`. A float range without a step has no points to list, so it is refused, as is a
knob conditional on another searched knob (a grid point where the condition fails would
repeat another; a condition on the compared knob is fine).
`search.trials` defaults to the number of points; a smaller number runs the first points
of the grid's seeded order (a quick look at a partial grid); a larger one is refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Protocol

from study.spec.context import Context
from study.spec.knobs import LIMITS, fmt_number
from study.spec.model import Dist

__all__ = ["check_grid", "grid_size", "grid_values"]


class _HasTrials(Protocol):
    sampler: str
    trials: int


def _range_count(d: Dist) -> int:
    """How many values a stepped range holds (without listing them)."""
    step = d.step if d.step is not None else 1
    return int(math.floor((float(d.high) - float(d.low)) / float(step) + 1e-9)) + 1


def grid_values(d: Dist) -> list[Any]:
    """The values of one searched knob on the grid, in order (its distribution must have
    passed :func:`check_grid`)."""
    if d.kind == "choice":
        return list(d.choices)
    n = _range_count(d)
    if d.kind == "int":
        return [int(d.low) + i * int(d.step or 1) for i in range(n)]
    # 12 significant digits: 0.1 + 2 * 0.1 is 0.3 on the grid, not 0.30000000000000004
    return [float(f"{float(d.low) + i * float(d.step or 0):.12g}") for i in range(n)]


def grid_size(space: Mapping[str, Dist]) -> int:
    """The number of grid points (1 for an empty space)."""
    return math.prod(len(d.choices) if d.kind == "choice" else _range_count(d)
                     for d in space.values())


def check_grid(c: Context, raw_search: Any, search: _HasTrials,
               space: Mapping[str, Dist]) -> Any:
    """For a grid sampler: every searched knob has listable values, the grid is not too
    big, and `search.trials` is at most its size (default: its size). Returns `search`
    with `trials` set; other samplers' sections come back unchanged."""
    if search.sampler != "grid":
        return search
    for k, d in space.items():
        if any(cond in space for cond in d.when):  # one on the compared knob always holds
            c.fail(f"space.{k}.when", dict(d.when), "no `when` on a searched knob with "
                   "`search.sampler: grid` (a grid point where the condition fails repeats "
                   "another); search the knob unconditionally or use another sampler",
                   "conditional knob")
        if d.kind == "float" and d.step is None:
            form = "log" if d.log else "float"
            c.fail(f"space.{k}", {form: [d.low, d.high]}, "with `search.sampler: grid`, "
                   f"a range with a `step` ({{float: [{fmt_number(d.low)}, "
                   f"{fmt_number(d.high)}], step: ...}}) or a {{choice: [...]}} of the "
                   "values to run", "a float range has no grid points")
    most = int(LIMITS["search.trials"][1])
    size = grid_size(space)
    if size > most:
        sizes = " x ".join(f"{k}: {len(grid_values(d)) if d.kind == 'choice' else _range_count(d)}"
                           for k, d in space.items())
        c.fail("space", sizes, f"a grid of at most {fmt_number(most)} points (here "
               f"{size:,}): fewer values, larger steps, or another sampler", "grid too big")
    given = raw_search.get("trials") if isinstance(raw_search, Mapping) else None
    if given is None:
        return dataclasses.replace(search, trials=size)  # type: ignore[type-var]
    if search.trials > size:
        c.fail("search.trials", search.trials, f"at most the grid's {size} points (each runs "
               "once); leave `trials` out to run the whole grid", "more trials than points")
    return search
