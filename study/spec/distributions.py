"""`space:`: the searched knobs as Optuna-style distributions, optionally conditional."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from study.spec.context import Context
from study.spec.knobs import KNOBS, LIMITS, Knob, fmt_number
from study.spec.layer_values import LayerValues
from study.spec.model import Dist

_SPACE_FORMS = ("{choice: [a, b, ...]}, {int: [low, high]}, {float: [low, high]} or "
                "{log: [low, high]}")


def parse_space(c: Context, value: Any, fixed_from: Mapping[str, str],
                 compare_knob: str | None, fixed_value: Any,
                 allowed: Sequence[str] = tuple(KNOBS)) -> dict[str, Dist]:
    """`space:` {knob: distribution}; a searched knob is neither fixed nor compared;
    `allowed`: the knobs the model family and the trainer read."""
    space_map = c.mapping("space", value, list(allowed))
    out: dict[str, Dist] = {}
    for k, spec in space_map.items():
        path = f"space.{k}"
        if k in fixed_from:
            c.fail(fixed_from[k], fixed_value(k), f"a knob set in one place only: {k} is also "
                   "searched "
                   f"in `{path}`", "set twice")
        if k == compare_knob:
            c.fail(path, spec, f"a knob that is not also compared (`compare.{k}`)", "set twice")
        out[k] = _parse_dist(c, path, KNOBS[k], spec)
    _check_conditions(c, out, compare_knob)
    return out


def _parse_dist(c: Context, path: str, knob: Knob, spec: Any) -> Dist:
    """One `space.<knob>`: exactly one of the _SPACE_FORMS, with `step` and `when`."""
    m = c.mapping(path, spec, ["choice", "int", "float", "log", "step", "when"])
    kinds = [f for f in ("choice", "int", "float", "log") if f in m]
    if len(kinds) != 1:
        c.fail(path, spec, f"exactly one of {_SPACE_FORMS}")
    form = kinds[0]
    when = _parse_when(c, f"{path}.when", m.get("when"), knob.name)
    if form == "choice":
        return _parse_choice(c, path, knob, m, when)
    return _parse_range(c, path, knob, spec, m, form, when)


def _parse_choice(c: Context, path: str, knob: Knob, m: Mapping[str, Any],
                  when: dict[str, tuple[Any, ...]]) -> Dist:
    """`{choice: [a, b, ...]}`: distinct legal values of the knob, no `step`."""
    ch = m["choice"]
    if not isinstance(ch, list) or not ch:
        c.fail(f"{path}.choice", ch, f"a non-empty list of values; {knob.name} takes "
               f"{knob.allowed()}", "empty or not a list")
    if len(ch) > LIMITS["choices"][1]:
        c.fail(f"{path}.choice", ch, f"at most {fmt_number(LIMITS['choices'][1])} values",
               "too many values")
    vals = tuple(c.knob_value(f"{path}.choice[{i}]", knob, v) for i, v in enumerate(ch))
    if len(set(map(repr, vals))) != len(vals):
        c.fail(f"{path}.choice", ch, "distinct values (a value is repeated)")
    if "step" in m:
        c.fail(f"{path}.step", m["step"], "`step` only with int or float ranges",
               "unknown key")
    return Dist("choice", choices=vals, when=when)


def _parse_range(c: Context, path: str, knob: Knob, spec: Any, m: Mapping[str, Any], form: str,
                 when: dict[str, tuple[Any, ...]]) -> Dist:
    """`{int|float|log: [low, high]}` (+ `step`) of a numeric knob, in the knob's bounds."""
    lo, hi = _range_bounds(c, path, knob, spec, m[form], form)
    log = form == "log"
    if log and lo <= 0:
        c.fail(f"{path}.log", m[form], "a range with low > 0 for a log scale")
    k = knob.name
    if form == "int" and knob.kind is not int:
        c.fail(path, spec, f"{{float: [low, high]}} or {{log: [low, high]}}: {k} is a number",
               "an int range for a float knob")
    if form == "float" and knob.kind is int:
        c.fail(path, spec, f"{{int: [low, high]}}: {k} is an integer",
               "a float range for an integer knob")
    kind = "int" if knob.kind is int else "float"
    step = _range_step(c, path, knob, m.get("step"), kind, log)
    if knob.odd and (step is None or step % 2):
        c.fail(path, spec, f"{k} takes odd values only: an int range with an even step "
               f"(e.g. {{int: [1, 7], step: 2}}) or {{choice: [...]}}", "even values in range")
    return Dist(kind, low=lo, high=hi, step=step, log=log, when=when)


def _range_bounds(c: Context, path: str, knob: Knob, spec: Any, rng: Any,
                  form: str) -> tuple[Any, Any]:
    """A range's [low, high]: two values of the knob, low <= high."""
    if knob.kind not in (int, float, LayerValues):
        c.fail(path, spec, f"{{choice: [...]}}: {knob.name} takes {knob.allowed()}",
               f"a range does not fit a {knob.kind.__name__} knob")
    if not (isinstance(rng, list) and len(rng) == 2):
        c.fail(f"{path}.{form}", rng, "a list [low, high]")
    if knob.kind is LayerValues:  # a range of one constant for every layer
        for i, v in enumerate(rng):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                c.fail(f"{path}.{form}[{i}]", v, "a number (per-layer rules only in "
                       "{choice: [...]})", "expected a number")
    lo = c.knob_value(f"{path}.{form}[0]", knob, rng[0])
    hi = c.knob_value(f"{path}.{form}[1]", knob, rng[1])
    if lo > hi:
        c.fail(f"{path}.{form}", rng, f"low <= high (low={fmt_number(lo)}, high={fmt_number(hi)})",
               "low > high")
    return lo, hi


def _range_step(c: Context, path: str, knob: Knob, step: Any, kind: str,
                log: bool) -> float | None:
    """A range's `step`: positive, not with a log scale, whole for an integer knob."""
    if step is None:
        return None
    step = c.number(f"{path}.step", step, low=0.0, high=knob.high, low_open=True)
    if log:
        c.fail(f"{path}.step", step, "no step with a log range", "conflict")
    if kind == "int" and not float(step).is_integer():
        c.fail(f"{path}.step", step, "a whole number for an integer knob")
    return step


def _check_conditions(c: Context, space: Mapping[str, Dist], compare_knob: str | None) -> None:
    """Each `when` is on a knob searched unconditionally or compared (no chains)."""
    for k, d in space.items():
        for cond in d.when:
            if cond in space and space[cond].when:
                c.fail(f"space.{k}.when.{cond}", dict(d.when), "a condition on a knob that is "
                       "itself unconditional (no chains of `when`)")
            if cond not in space and cond != compare_knob:
                c.fail(f"space.{k}.when.{cond}", cond, "a knob that is searched in `space` or "
                       f"compared; searched: {', '.join(space) or 'none'}",
                       "condition on a knob that is neither searched nor compared")


def _parse_when(c: Context, path: str, value: Any, knob_name: str) -> dict[str, tuple[Any, ...]]:
    if value is None:
        return {}
    m = c.mapping(path, value, [k for k in KNOBS if k != knob_name])
    out = {}
    for k, v in m.items():
        vals = v if isinstance(v, list) else [v]
        if not vals:
            c.fail(f"{path}.{k}", v, "a value or a non-empty list of values")
        out[k] = tuple(c.knob_value(f"{path}.{k}", KNOBS[k], x) for x in vals)
    return out
