"""The values a configuration is told to Optuna as, one per objective (`metric:`).

A single-objective study is told the mean of its metric over the configuration's usable
runs (study.search.searcher); a multi-objective one the same mean for every objective.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from study.report.stats import finite_mean, usable_value
from study.spec import StudySpec

__all__ = ["config_means", "run_objectives", "study_directions"]


def study_directions(spec: StudySpec) -> list[str]:
    """Optuna's direction of every objective, in the spec's order."""
    objectives = spec.objectives or ((spec.metric, spec.mode),)
    return ["minimize" if mode == "min" else "maximize" for _, mode in objectives]


def run_objectives(spec: StudySpec, record: Mapping[str, Any] | None,
                   ) -> tuple[float | None, ...]:
    """One run's value of every objective (None where it has none: failed, not finite)."""
    objectives = spec.objectives or ((spec.metric, spec.mode),)
    return tuple(usable_value(record, name) for name, _ in objectives)


def config_means(per_run: Iterable[tuple[float | None, ...]]) -> list[float] | None:
    """The mean of each objective over the runs that have it; None if some objective has
    no value in any run (the configuration is then told as failed)."""
    rows = list(per_run)
    if not rows:
        return None
    means = [finite_mean(r[i] for r in rows) for i in range(len(rows[0]))]
    return None if any(m is None for m in means) else [float(m) for m in means]  # type: ignore[arg-type]
