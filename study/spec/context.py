"""The parsing context: typed field readers that fail with a SpecError naming the file,
the field, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from study.errors import SpecError
from study.spec.knobs import LIMITS, Knob, fmt_number
from study.terminal import printable


class Context:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, value: Any, allowed: str, problem: str = "invalid value") -> None:
        text = shown(value)
        raise SpecError(
            f"{self.source}: field `{path}`: {problem}: {text}. Allowed: {allowed}."
        )

    def mapping(self, path: str, value: Any, allowed_keys: Sequence[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, value, "a mapping with keys " + ", ".join(allowed_keys),
                      "expected a mapping")
        for k in value:
            if k not in allowed_keys:
                self.fail(f"{path}.{k}" if path else str(k), k,
                          "keys " + ", ".join(allowed_keys), "unknown key")
        return dict(value)

    def integer(self, path: str, value: Any, also: str | None = None) -> int:
        """An integer within LIMITS[path]; `also`: a word also allowed, named in the error
        (see `integer_or_auto`)."""
        low, high = LIMITS[path]
        allowed = (f"{also} or " if also else "") + \
            f"an integer from {fmt_number(low)} to {fmt_number(high)}"
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, value, allowed, "expected an integer")
        if not low <= value <= high:
            self.fail(path, value, allowed, "out of range")
        return value

    def integer_or_auto(self, path: str, value: Any) -> int | None:
        """`auto` (None: the runner chooses) or an integer within LIMITS[path]."""
        return None if value == "auto" else self.integer(path, value, also="auto")

    def number(self, path: str, value: Any, low: float | None = None,
               high: float | None = None, low_open: bool = False) -> float:
        """A finite number within [low, high] (or LIMITS[path] when not given)."""
        if low is None and high is None and path in LIMITS:
            low, high = LIMITS[path]
        desc = "a number"
        if low is not None:
            desc += f" {'>' if low_open else '>='} {fmt_number(low)}"
        if high is not None:
            desc += f" and <= {fmt_number(high)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, value, desc, "expected a number")
        try:
            v = float(value)
        except OverflowError:  # an int beyond a float's range
            v = math.inf
        bad = not math.isfinite(v)
        bad = bad or (low is not None and (v < low or (low_open and v == low)))
        bad = bad or (high is not None and v > high)
        if bad:
            self.fail(path, value, desc, "out of range")
        return v

    def string(self, path: str, value: Any, choices: Sequence[str] | None = None) -> str:
        """One of `choices`, or (without) a one-line string: no control characters, no
        space at either end (names, paths, URLs)."""
        allowed = "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
        if not isinstance(value, str) or not value.strip():
            self.fail(path, value, allowed, "expected a non-empty string")
        if choices is not None and value not in choices:
            self.fail(path, value, allowed)
        if choices is None and (printable(value) != value or value != value.strip()
                                or "\n" in value or "\t" in value):
            self.fail(path, value, "one line without control characters and without "
                      "spaces at either end", "unsafe characters")
        return value

    def text(self, path: str, value: Any) -> str:
        """Free text (a question): newlines and tabs allowed, other control characters
        not; surrounding space removed; at most LIMITS[path] characters."""
        if not isinstance(value, str) or not value.strip():
            self.fail(path, value, "a string", "expected a non-empty string")
        value = value.strip()
        if printable(value) != value:
            self.fail(path, value, "text without control characters (newlines and tabs "
                      "are fine)", "unsafe characters")
        _, high = LIMITS[path]
        if len(value) > high:
            self.fail(path, value, f"at most {fmt_number(high)} characters", "too long")
        return value

    def knob_value(self, path: str, knob: Knob, value: Any) -> Any:
        try:
            return knob.check(value)
        except ValueError:
            self.fail(path, value, f"{knob.name} ({knob.doc}) takes {knob.allowed()}")
        raise AssertionError("unreachable")  # pragma: no cover


def shown(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 1000:  # repr fails past 4300 digits
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
    s = repr(value)
    return s if len(s) <= 80 else s[:77] + "..."


def shorthand(value: str) -> dict[str, Any]:
    """`cnn` -> {name: cnn}; `npz:PATH` -> {name: npz, path: PATH} (model and dataset)."""
    name, _, path = value.partition(":")
    return {"name": name} | ({"path": path} if path else {})
