"""`metric:`: what Optuna optimizes, one objective or several (a Pareto front).

`metric: val_accuracy`, `{name: val_loss, mode: min}`, or a list of either for a
multi-objective search, e.g. `[val_accuracy, model_params]`: accuracy against the model's
cost (parameters or multiply-adds per example), each with its mode (a default per metric).
"""

from __future__ import annotations

from typing import Any

from study.spec.context import Context
from study.spec.knobs import LIMITS, METRICS, fmt_number

__all__ = ["OBJECTIVES", "parse_objectives"]

# A run's training metrics, and what its model costs (the same for every seed of a level).
OBJECTIVES = {**METRICS, "model_params": "min", "macs": "min"}


def parse_objectives(c: Context, value: Any, scheduler: str) -> tuple[tuple[str, str], ...]:
    """The objectives as (name, mode) pairs, the first being the one progress, early
    stopping and `StudyResult.best` speak of; distinct names; several only with FIFO."""
    if not isinstance(value, list):
        return (_objective(c, "metric", value),)
    lo, hi = LIMITS["objectives"]
    if not lo <= len(value) <= hi:
        c.fail("metric", value, f"a metric, or a list of {fmt_number(lo)} to {fmt_number(hi)} "
               "metrics for a multi-objective search", "wrong number of metrics")
    out = tuple(_objective(c, f"metric[{i}]", v) for i, v in enumerate(value))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        c.fail("metric", value, "distinct metrics (a metric is repeated)")
    if len(out) > 1 and scheduler != "fifo":
        c.fail("search.scheduler", scheduler, "fifo with several metrics (ASHA stops runs "
               "on one metric; a Pareto front needs every run to its end)", "conflict")
    return out


def _objective(c: Context, path: str, value: Any) -> tuple[str, str]:
    """`NAME` or {name, mode}."""
    if isinstance(value, str):
        value = {"name": value}
    m = c.mapping(path, value, ["name", "mode"])
    name = c.string(f"{path}.name", m.get("name", "val_accuracy"), list(OBJECTIVES))
    mode = c.string(f"{path}.mode", m.get("mode", OBJECTIVES[name]), ["max", "min"])
    return name, mode
