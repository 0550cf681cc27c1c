"""Per-layer constants (bias init): one number for every layer, a list with one per layer,
or a rule whose last entry repeats for the remaining layers.

A rule is written as text, e.g. ``"0, 1..."`` (the first layer 0, every later one 1) or
``"0, 1, 0, 1, 1, 0..."`` (AlexNet's conv biases: 1 in conv2, conv4 and conv5). A YAML list
``[0, 1]`` (or such text without "...") means exactly one constant per layer. Both are kept
as one canonical string (``"0,1..."``, ``"[0,1]"``) so that Optuna, MLflow params and run
keys can hold them; a plain number stays a float. Torch-free: the spec stage validates with
it, the model stage expands it.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LayerValues", "describe", "exact_count", "expand", "from_text"]

REPEAT = "..."


class LayerValues:
    """The kind of a knob that takes per-layer constants (see the module docstring)."""

    __name__ = "per-layer constants"

    @staticmethod
    def check(value: Any, low: float, high: float) -> float | str:
        """The canonical value, or ValueError (no context) for anything else."""
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            return _number(value, low, high)
        if isinstance(value, list):
            if not value:
                raise ValueError
            return "[" + ",".join(_fmt(_number(v, low, high)) for v in value) + "]"
        if isinstance(value, str):
            return _canonical_rule(value, low, high)
        raise ValueError


def _number(value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError
    try:
        v = float(value)
    except OverflowError:
        raise ValueError from None
    if not math.isfinite(v) or not low <= v <= high:
        raise ValueError
    return v


def _fmt(v: float) -> str:
    return str(int(v)) if v.is_integer() else repr(v)


def _canonical_rule(text: str, low: float, high: float) -> float | str:
    """"0, 1..." -> "0,1..."; "0, 1" or "[0, 1]" -> "[0,1]"; a number as text -> the
    number."""
    text = text.strip()
    if len(text) > 1000:
        raise ValueError
    bracketed = text.startswith("[") and text.endswith("]")
    if bracketed:
        text = text[1:-1]
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not p for p in parts):
        raise ValueError
    if any(p.endswith(REPEAT) for p in parts[:-1]):
        raise ValueError  # only the last entry repeats
    repeat = parts[-1].endswith(REPEAT)
    if repeat and bracketed:
        raise ValueError  # a list is exact; a rule repeats
    if repeat:
        parts[-1] = parts[-1][: -len(REPEAT)].strip()
    values = []
    for p in parts:
        try:
            values.append(_number(float(p), low, high))
        except (ValueError, OverflowError):
            raise ValueError from None
    if len(values) == 1 and not repeat and not bracketed:
        return values[0]
    body = ",".join(_fmt(v) for v in values)
    return body + REPEAT if repeat else f"[{body}]"


def _entries(value: float | str) -> tuple[list[float], bool]:
    if isinstance(value, (int, float)):
        return [float(value)], True
    repeat = value.endswith(REPEAT)
    body = value[: -len(REPEAT)] if repeat else value.strip("[]")
    return [float(p) for p in body.split(",")], repeat


def exact_count(value: float | str) -> int | None:
    """The number of layers a list fits exactly; None for a number or a repeating rule."""
    entries, repeat = _entries(value)
    return None if repeat else len(entries)


def expand(value: float | str, layers: int) -> list[float]:
    """The constant of each of `layers` layers; ValueError if a list has another length."""
    entries, repeat = _entries(value)
    if not repeat:
        if len(entries) != layers:
            raise ValueError(f"{value!r} has {len(entries)} constants for {layers} layers")
        return entries
    return [entries[min(i, len(entries) - 1)] for i in range(layers)]


def describe(low: float, high: float) -> str:
    """What such a knob takes, for error messages."""
    lo, hi = _fmt(float(low)), _fmt(float(high))
    return (f"a number from {lo} to {hi} (every layer), a list with one such number per "
            f"layer, or a rule such as '0, 1...' (first layer 0, the rest 1)")


def from_text(text: str) -> float | str:
    """A value read back as text (an MLflow param): a float or the canonical rule."""
    try:
        return float(text)
    except ValueError:
        return text
