"""The depth and width curves as a figure: every point with its interval, and its n.

One row of panels per x knob (depth, width). When a curve is split by the other knob too
(a grid over depth x width), each panel holds one combination of the other split knobs
(plain/residual, norm) and one line per value of the other knob; else one panel per x.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from study.report.stats import CurvePoint

__all__ = ["plot_curves"]


def _panels(series: Mapping[str, Sequence[CurvePoint]], by_other: bool,
            ) -> dict[str, dict[str, Sequence[CurvePoint]]]:
    """Series grouped into panels: by the label's parts but the last when `by_other` (the
    last split knob is the other curve knob), else all in one panel."""
    out: dict[str, dict[str, Sequence[CurvePoint]]] = defaultdict(dict)
    for label, pts in series.items():
        head, _, last = label.rpartition(", ") if by_other else ("", "", label)
        out[head][last] = pts
    return out


def plot_curves(curve_sets: Mapping[str, Mapping[str, Sequence[CurvePoint]]],
                by_other: Mapping[str, bool], metric: str, scale: float, ci: str,
                plt: Any) -> Any:
    """The figure: mean at every point, error bars for its interval (`ci`, e.g. "95% CI"),
    n in each panel's title when every point has the same, else beside each point."""
    panels = {x: _panels(series, by_other.get(x, False)) for x, series in curve_sets.items()}
    cols = max(len(p) for p in panels.values())
    fig, axes = plt.subplots(len(panels), cols, figsize=(4.8 * cols, 3.8 * len(panels)),
                             squeeze=False)
    for row, (x, groups) in enumerate(panels.items()):
        for col in range(cols):
            ax = axes[row][col]
            if col >= len(groups):
                ax.set_visible(False)
                continue
            title, lines = list(groups.items())[col]
            _draw_panel(ax, lines, scale)
            ns = {p.n for pts in lines.values() for p in pts}
            ax.set_title((title + "; " if title else "")
                         + (f"n={ns.pop()} per point" if len(ns) == 1 else "n beside points"),
                         fontsize=9)
            ax.set_xlabel(x)
            ax.set_ylabel(f"{metric}{' (%)' if scale != 1 else ''}, mean and {ci}")
            if scale != 1:  # an accuracy: an interval past 0 or 100% is cut at the edge
                low, high = ax.get_ylim()
                ax.set_ylim(max(low, 0.0), min(high, 100.5))
    fig.tight_layout()
    return fig


def _draw_panel(ax: Any, lines: Mapping[str, Sequence[CurvePoint]], scale: float) -> None:
    ns = {p.n for pts in lines.values() for p in pts}
    for label, pts in lines.items():
        xs = [p.x for p in pts]
        ms = [p.mean * scale for p in pts]
        lo = [(p.mean - p.ci_low) * scale if math.isfinite(p.ci_low) else 0.0 for p in pts]
        hi = [(p.ci_high - p.mean) * scale if math.isfinite(p.ci_high) else 0.0 for p in pts]
        ax.errorbar(xs, ms, yerr=[lo, hi], marker="o", ms=4, capsize=3, label=label)
        if len(ns) > 1:
            for p, m in zip(pts, ms, strict=True):
                ax.annotate(f"{p.n}", (p.x, m), textcoords="offset points", xytext=(4, 4),
                            fontsize=6)
    xs = sorted({p.x for pts in lines.values() for p in pts})
    if len(xs) <= 20:  # integer knobs: a tick at every point, none between
        ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
