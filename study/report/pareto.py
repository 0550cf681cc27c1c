"""Pareto fronts of a multi-objective study (`metric: [val_accuracy, model_params]`).

A configuration is Pareto-optimal when no other is at least as good on every objective
and better on one. The report draws one front per level of the compared knob (bias on
and off, say): each configuration's point at that level is the mean of every objective
over the level's usable runs (its seeds).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from study.records import nondominated
from study.report.stats import finite_mean, scale, show_value, usable_value

__all__ = ["FrontPoint", "level_fronts", "pareto_blocks",
           "plot_fronts"]


@dataclass(frozen=True)
class FrontPoint:
    """One configuration at one level: the mean of every objective over its runs."""

    config: int
    params: dict[str, Any]  # the searched knobs' values
    values: tuple[float, ...]  # in `metric:` order
    n: int  # usable runs (seeds) behind the means
    optimal: bool  # on its level's front


def level_fronts(rows: Sequence[Mapping[str, Any]], objectives: Sequence[tuple[str, str]],
                 knob: str | None, searched: Sequence[str] = ()) -> dict[str, list[FrontPoint]]:
    """Per level of `knob` ("knob=value"; "all" without one), every configuration's point
    and whether it is on that level's front. A run counts when it has a value for every
    objective (failed runs do not; diverged ones do, with the value they reached)."""
    groups: dict[str, dict[int, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if all(usable_value(r, name) is not None for name, _ in objectives):
            label = f"{knob}={show_value(r.get('level'))}" if knob else "all"
            groups[label][int(r["config"])].append(r)
    modes = [mode for _, mode in objectives]
    out: dict[str, list[FrontPoint]] = {}
    for label, by_config in groups.items():
        configs = sorted(by_config)
        values = [tuple(float(finite_mean(usable_value(r, name) for r in by_config[c]) or 0.0)
                        for name, _ in objectives) for c in configs]
        front = set(nondominated(values, modes))
        out[label] = [FrontPoint(c, {k: by_config[c][0].get(f"param.{k}") for k in searched},
                                 values[i], len(by_config[c]), i in front)
                      for i, c in enumerate(configs)]
    return out


def _shown(name: str, value: float) -> str:
    """An objective's value in its display unit (accuracies in %)."""
    s = scale(name)
    return f"{value * s:.2f}" if s != 1.0 or not float(value).is_integer() else f"{value:,.0f}"


def _knobs(params: Mapping[str, Any]) -> str:
    """Searched knobs for a table cell (floats to 4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={show_value(v)}"
                     for k, v in params.items()) or "(fixed)"


def pareto_blocks(fronts: Mapping[str, Sequence[FrontPoint]],
                  objectives: Sequence[tuple[str, str]]) -> list[tuple[str, Any]]:
    """The report's trade-off section: the plot and each level's Pareto-optimal points."""
    names = [f"{name} ({mode}{', %' if scale(name) != 1.0 else ''})" for name, mode in objectives]
    rows = [[label, str(p.config), _knobs(p.params),
             *(_shown(n, v) for (n, _), v in zip(objectives, p.values, strict=True)), str(p.n)]
            for label, pts in fronts.items() for p in pts if p.optimal]
    return [
        ("h2", "Trade-offs (Pareto front)"),
        ("p", "Objectives: " + ", ".join(names) + ". Each point is one configuration at one "
         "level, the mean of every objective over its usable runs; a configuration is on "
         "its level's front when no other configuration at that level is at least as good "
         "on every objective and better on one. The plot shows the first two objectives; "
         "the table lists the front of each level."),
        ("img", "pareto.png"),
        ("table", (["level", "config", "searched knobs", *names, "runs"], rows)),
    ]


def plot_fronts(fronts: Mapping[str, Sequence[FrontPoint]],
                objectives: Sequence[tuple[str, str]], plt: Any) -> Any:
    """A figure of the first two objectives: every point, each level's front joined."""
    (x_name, _), (y_name, _) = objectives[0], objectives[1]
    sx, sy = scale(x_name), scale(y_name)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, pts) in enumerate(fronts.items()):
        color = f"C{i % 10}"
        ax.scatter([p.values[0] * sx for p in pts if not p.optimal],
                   [p.values[1] * sy for p in pts if not p.optimal], s=18, color=color,
                   alpha=0.35)
        best = sorted((p for p in pts if p.optimal), key=lambda p: p.values[0])
        ax.plot([p.values[0] * sx for p in best], [p.values[1] * sy for p in best],
                marker="o", color=color, label=f"{label}: front ({len(best)} of {len(pts)})")
    ax.set_xlabel(x_name + (" (%)" if sx != 1.0 else ""))
    ax.set_ylabel(y_name + (" (%)" if sy != 1.0 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Pareto front per level (faded: dominated configurations)")
    return fig
