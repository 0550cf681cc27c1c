"""Expected best score against budget, per level of the compared knob (Dodge et al. 2019,
"Show Your Work"; the unbiased estimator of Tang et al. 2020, ``study.report.budget``).

A configuration's score at a level is the mean of the verdict metric over its search runs
at that level (runs the sequential phase added are left out, so every configuration counts
the same seeds). The curve is the expected best score among n configurations drawn at
random from those the search ran: exact for a random search, approximate for a model-based
sampler (TPE, QMC), whose configurations are not independent draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from study.report.budget import BudgetCurve, expected_best
from study.report.figures import fig_png, pyplot
from study.report.stats import display_unit, finite_mean, show_value, usable_value
from study.spec import StudySpec

__all__ = ["budget_blocks", "budget_curves", "plot_budget"]

Block = tuple[str, Any]


def budget_curves(rows: Sequence[Mapping[str, Any]], spec: StudySpec,
                  ) -> dict[str, BudgetCurve]:
    """Level (as written in the spec) -> its curve; levels with under two scored
    configurations are left out."""
    out = {}
    for level in spec.compare_levels:
        by_cfg: dict[int, list[float | None]] = {}
        for r in rows:
            if int(r.get("look") or 0) == 0 and repr(r.get("level")) == repr(level):
                by_cfg.setdefault(r["config"], []).append(usable_value(r, spec.verdict_metric))
        scores = [m for m in (finite_mean(v) for v in by_cfg.values()) if m is not None]
        if len(scores) >= 2:
            out[show_value(level)] = expected_best(scores, spec.verdict_mode)
    return out


def budget_blocks(curves: Mapping[str, BudgetCurve], spec: StudySpec) -> list[Block]:
    s, unit = display_unit(spec.verdict_metric, parens=True)
    exact = spec.sampler == "random"
    note = ("exact for this random search" if exact else
            f"approximate: the `{spec.sampler}` sampler's configurations are not independent "
            "random draws, so the curve is that of drawing from what it proposed")
    n_max = max(len(c.n) for c in curves.values())
    rows = []
    for i in range(n_max):
        cells = []
        for c in curves.values():
            cells.append(f"{c.mean[i] * s:.2f} ± {c.sd[i] * s:.2f}" if i < len(c.n) else "")
        rows.append([str(i + 1), *cells])
    return [
        ("h2", "Expected best score against budget"),
        ("p", f"For each level of `{spec.compare_knob}`: the expected best {spec.verdict_metric}"
              f"{unit} among n configurations drawn at random without replacement from "
              "those the search ran (mean ± sd over draws; a configuration's score is its "
              "mean over its search runs at that level). Dodge et al. 2019, \"Show Your "
              f"Work\"; unbiased estimator of Tang et al. 2020; {note}."),
        ("img", "budget.png"),
        ("table", (["configurations", *(f"{spec.compare_knob}={k}" for k in curves)], rows)),
    ]


def plot_budget(curves: Mapping[str, BudgetCurve], spec: StudySpec) -> bytes:
    plt = pyplot()
    s, unit = display_unit(spec.verdict_metric, parens=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, c in curves.items():
        m = [v * s for v in c.mean]
        sd = [v * s for v in c.sd]
        ax.plot(c.n, m, marker="o", label=f"{spec.compare_knob}={label}")
        ax.fill_between(c.n, [a - b for a, b in zip(m, sd, strict=True)],
                        [a + b for a, b in zip(m, sd, strict=True)], alpha=0.15)
    ax.set_xlabel("configurations (budget)")
    ax.set_ylabel(f"expected best {spec.verdict_metric}{unit}")
    if spec.sampler != "random":
        ax.set_title(f"approximate ({spec.sampler} sampler)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig_png(fig)
