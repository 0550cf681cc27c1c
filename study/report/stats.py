"""Paired effects, confidence intervals, equivalence tests and verdicts.

Pure functions of a table of runs (one dict per training run, as
:meth:`study.records.StudyResult.table` or :func:`study.tracking.read.runs_from_mlflow` give):
no Ray, no stores. numpy and scipy only.

Method (stated in every report):
- A *pair* (a block, with more than two levels) is one configuration and one seed: same
  initial values for every shared parameter, same mini-batch order, same data split.
- For each level other than the reference (the first level listed in `compare:`), the
  paired difference is ``metric(level) - metric(reference)`` within a pair.
- Mean difference with a two-sided 100(1 - alpha)% paired-t confidence interval (alpha is
  the spec's `verdict.alpha`, 0.05 unless set: a 95% interval).
- Equivalence: two one-sided tests (TOST) at alpha against ``±margin``, i.e. the
  100(1 - 2 alpha)% confidence interval lies inside the margin.
- Verdict: *equivalent* (TOST passes), else *better* / *worse* (the interval excludes 0;
  direction by the metric's mode), else *inconclusive*, with the number of pairs that
  would likely settle it.
- Failed runs carry no value: a pair with a failed arm is excluded, and counted. Diverged
  runs keep the value they reached (a diverging arm is a real outcome of the factor).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from study.records import USABLE, RunStatus

__all__ = ["USABLE", "Effect", "ci_label", "curves", "finite_mean", "finite_values",
           "paired_effects", "rows_by_pair", "scale", "show_value", "status_counts",
           "usable_value"]


def ci_label(alpha: float) -> str:
    """How an interval at significance level `alpha` is named: "95% CI" for 0.05."""
    return f"{100 * (1 - alpha):.4g}% CI"


@dataclass(frozen=True)
class Effect:
    """The effect of switching the compared knob from `reference` to `level`."""

    knob: str
    reference: Any
    level: Any
    metric: str
    group: str  # "all", or e.g. "norm=batch"
    n: int  # usable pairs
    mean: float  # mean paired difference (level - reference)
    sd: float
    ci_low: float  # two-sided 100(1 - alpha)% paired-t interval
    ci_high: float
    p_value: float  # two-sided paired t-test of mean = 0
    tost_p: float  # equivalence within ±margin (max of the two one-sided p-values)
    margin: float
    verdict: str  # better, worse, equivalent, inconclusive
    pairs_needed: int | None  # for an inconclusive verdict: pairs that would likely settle it
    excluded_pairs: int  # pairs left out because an arm failed or is missing
    diverged_pairs: int  # usable pairs with at least one diverged arm
    mean_reference: float
    mean_level: float
    differences: tuple[float, ...] = field(repr=False, default=())
    alpha: float = 0.05  # the significance level the interval and the tests used

    @property
    def ci_label(self) -> str:
        return ci_label(self.alpha)

    def sentence(self, higher_is_better: bool = True, unit: str = "pp") -> str:
        """E.g. 'bias=false vs bias=true changed test_accuracy by +0.02 pp, 95% CI
        [-0.05, 0.09], n=40 pairs: equivalent within the ±0.5 pp margin.' (the interval
        named by its level: 90% CI for alpha 0.1)"""
        s = scale(self.metric) if unit == "pp" else 1.0
        what = (f"{self.knob}={show_value(self.level)} vs {self.knob}={show_value(self.reference)}"
                + ("" if self.group == "all" else f" ({self.group})"))
        if self.n == 0:
            return f"{what}: no usable pairs ({self.excluded_pairs} excluded)."
        u = f" {unit}" if s != 1 else ""
        body = (f"{what} changed {self.metric} by {self.mean * s:+.2f}{u}, {self.ci_label} "
                f"[{self.ci_low * s:+.2f}, {self.ci_high * s:+.2f}], n={self.n} pairs")
        if self.verdict == "equivalent":
            tail = f"equivalent within the ±{self.margin * s:g}{u} margin"
        elif self.verdict in ("better", "worse"):
            tail = f"{self.verdict} (p={self.p_value:.2g})"
        else:
            more = f"; about {self.pairs_needed} pairs in all would likely settle it" \
                if self.pairs_needed else ""
            tail = f"inconclusive{more}"
        extra = []
        if self.excluded_pairs:
            extra.append(f"{self.excluded_pairs} pair(s) excluded for a failed arm")
        if self.diverged_pairs:
            extra.append(f"{self.diverged_pairs} pair(s) with a diverged arm included")
        return f"{body}: {tail}." + (f" ({'; '.join(extra)})" if extra else "")


def scale(metric: str) -> float:
    """Factor that shows `metric` in its display unit: percentage points for accuracies."""
    return 100.0 if metric.endswith("accuracy") else 1.0


def display_unit(metric: str, parens: bool = False) -> tuple[float, str]:
    """`metric`'s display scale and the unit to write after it: (100, " pp") for accuracies,
    or " (pp)" with `parens` (an axis label); (1, "") for others."""
    s = scale(metric)
    if s != 100.0:
        return s, ""
    return s, " (pp)" if parens else " pp"


def show_value(x: Any) -> str:
    """A knob value as a spec writes it (booleans lower case)."""
    if isinstance(x, bool):
        return "true" if x else "false"
    return str(x)


def status_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[str(r.get("status", "unknown"))] += 1
    return dict(out)


def paired_effects(rows: Sequence[Mapping[str, Any]], *, knob: str, levels: Sequence[Any],
                   metric: str, margin: float, mode: str = "max", by: str | None = None,
                   alpha: float = 0.05) -> list[Effect]:
    """Paired effect of every non-reference level, overall and per value of `by`.

    Args:
        rows: one dict per run with keys ``config``, ``seed``, ``level``, ``status`` and
            `metric` (and ``param.<by>`` when `by` is given).
        knob: the compared knob; levels[0] is the reference.
        margin: the equivalence margin, in the metric's units (0.005 = 0.5 pp of accuracy).
        mode: "max" if a higher metric is better, else "min".
        by: a knob to break the effect down by (e.g. "norm"), or None.
    """
    if len(levels) < 2:
        raise ValueError(f"need at least two levels to compare, got {list(levels)}")
    groups: dict[str, list[Mapping[str, Any]]] = {"all": list(rows)}
    if by:
        for r in rows:
            groups.setdefault(group_key(r, by), []).append(r)
    out = []
    for gname, grows in groups.items():
        blocks = rows_by_pair(grows)
        for lvl in levels[1:]:
            out.append(_effect(blocks, knob, levels[0], lvl, metric, margin, mode, gname,
                               alpha))
    return out


def group_key(row: Mapping[str, Any], by: str) -> str:
    """The name of the `by` group a run row belongs to ("norm=batch")."""
    return f"{by}={show_value(row.get(f'param.{by}'))}"


def rows_by_pair(rows: Iterable[Mapping[str, Any]],
                 ) -> dict[tuple[Any, Any], dict[str, Mapping]]:
    """Rows grouped by pair (configuration, seed), each keyed by repr(level)."""
    blocks: dict[tuple[Any, Any], dict[str, Mapping]] = defaultdict(dict)
    for r in rows:
        blocks[(r["config"], r["seed"])][repr(r["level"])] = r
    return blocks


def _effect(blocks: Mapping[tuple[Any, Any], Mapping[str, Mapping]], knob: str, ref: Any,
            lvl: Any, metric: str, margin: float, mode: str, group: str,
            alpha: float) -> Effect:
    diffs, refs, lvls = [], [], []
    excluded = diverged = 0
    for block in blocks.values():
        a, b = block.get(repr(ref)), block.get(repr(lvl))
        if a is None and b is None:
            continue
        va, vb = usable_value(a, metric), usable_value(b, metric)
        if va is None or vb is None:
            excluded += 1
            continue
        if RunStatus.DIVERGED in (a.get("status"), b.get("status")):  # type: ignore[union-attr]
            diverged += 1
        diffs.append(vb - va)
        refs.append(va)
        lvls.append(vb)
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    sign = 1.0 if mode == "max" else -1.0
    if n == 0:
        nan = math.nan
        return Effect(knob, ref, lvl, metric, group, 0, nan, nan, nan, nan, nan, nan, margin,
                      "inconclusive", None, excluded, diverged, nan, nan, alpha=alpha)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    lo, hi, p, tost_p = _paired_t(d, margin, alpha)
    if tost_p < alpha:
        verdict = "equivalent"
    elif p < alpha:
        verdict = "better" if sign * mean > 0 else "worse"
    else:
        verdict = "inconclusive"
    need = _pairs_needed(mean, sd, margin, alpha) if verdict == "inconclusive" else None
    return Effect(knob, ref, lvl, metric, group, n, mean, sd, lo, hi, p, tost_p, margin,
                  verdict, need, excluded, diverged, float(np.mean(refs)), float(np.mean(lvls)),
                  tuple(float(x) for x in d), alpha=alpha)


def finite_values(values: Iterable[Any]) -> list[float]:
    """The values that are finite numbers; None, NaN, ±inf and non-numbers are left out."""
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def finite_mean(values: Iterable[Any]) -> float | None:
    """The mean of the finite values (fsum: the same in any order), None when there are
    none."""
    ok = finite_values(values)
    return math.fsum(ok) / len(ok) if ok else None


def usable_value(row: Mapping[str, Any] | None, metric: str) -> float | None:
    """The run's `metric` if the run ended with a value (completed or diverged) and it is
    finite, else None (failed, pruned, stopped, missing)."""
    if row is None or row.get("status") not in USABLE:
        return None
    v = row.get(metric)
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _paired_t(d: np.ndarray, margin: float, alpha: float) -> tuple[float, float, float, float]:
    """The 100(1 - alpha)% CI, two-sided p for mean 0, and the TOST p-value for ±margin."""
    from scipy import stats

    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return math.nan, math.nan, 1.0, 1.0
    se = float(d.std(ddof=1)) / math.sqrt(n)
    df = n - 1
    if se == 0.0:  # every pair identical: the interval is the point
        p = 1.0 if mean == 0 else 0.0
        tost = 0.0 if abs(mean) < margin else 1.0
        return mean, mean, p, tost
    t_crit = float(stats.t.ppf(1 - alpha / 2, df))
    lo, hi = mean - t_crit * se, mean + t_crit * se
    p = float(2 * stats.t.sf(abs(mean) / se, df))
    p_lower = float(stats.t.sf((mean + margin) / se, df))  # H0: mean <= -margin
    p_upper = float(stats.t.cdf((mean - margin) / se, df))  # H0: mean >= +margin
    return lo, hi, p, max(p_lower, p_upper)


def _pairs_needed(mean: float, sd: float, margin: float, alpha: float) -> int | None:
    """Pairs at which the expected interval would likely settle the question (normal
    approximation, the observed mean and spread taken as true): the fewer of those that
    show a difference (the 100(1 - alpha)% interval excludes 0) and, when |mean| < margin,
    those that show equivalence (the 100(1 - 2 alpha)% interval fits inside ±margin)."""
    if not math.isfinite(sd) or sd == 0:
        return None
    from scipy import stats

    options = []
    if mean != 0:
        options.append((float(stats.norm.ppf(1 - alpha / 2)) * sd / abs(mean)) ** 2)
    if abs(mean) < margin:
        options.append((float(stats.norm.ppf(1 - alpha)) * sd / (margin - abs(mean))) ** 2)
    return int(math.ceil(min(options))) + 1 if options else None


@dataclass(frozen=True)
class CurvePoint:
    x: int
    mean: float
    sd: float  # over runs (0 for one run)
    n: int  # usable runs at this point
    ci_low: float = math.nan  # two-sided 100(1 - alpha)% t-interval of the mean (n >= 2)
    ci_high: float = math.nan


def curves(rows: Sequence[Mapping[str, Any]], *, x: str, metric: str,
           split: Sequence[str] = ("residual", "norm"),
           alpha: float = 0.05) -> dict[str, list[CurvePoint]]:
    """Mean and spread of `metric` against knob `x` (depth, width), one curve per value
    combination of the `split` knobs (plain vs residual, with vs without norm): at every
    x its mean, sd, t-interval of the mean and n. Failed runs are left out; diverged runs
    count with the value they reached."""
    series: dict[tuple[Any, ...], dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        v = usable_value(r, metric)
        xv = r.get(f"param.{x}")
        if v is None or xv is None:
            continue
        series[tuple(r.get(f"param.{k}") for k in split)][xv].append(v)
    # curves in the order of their knobs' values (width 8 before 16), labelled as a spec says
    return {", ".join(f"{k}={show_value(v)}" for k, v in zip(split, key, strict=True)):
            [_curve_point(int(k), vs, alpha) for k, vs in sorted(pts.items())]
            for key, pts in sorted(series.items(), key=lambda kv: _order(kv[0]))}


def _order(values: Sequence[Any]) -> tuple[tuple[int, Any], ...]:
    """A sort key for knob values of any type: numbers by value, then the rest as text."""
    return tuple((0, v) if isinstance(v, (int, float)) else (1, str(v)) for v in values)


def _curve_point(x: int, values: Sequence[float], alpha: float) -> CurvePoint:
    """One point of a curve: mean, sd and the t-interval of the mean of `values`."""
    from scipy import stats

    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return CurvePoint(x, mean, 0.0, n)
    sd = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
    return CurvePoint(x, mean, sd, n, mean - half, mean + half)
