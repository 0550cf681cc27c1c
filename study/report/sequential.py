"""Group-sequential paired verdicts: alpha spending and repeated confidence intervals.

Pure statistics (numpy and scipy only): the runner adds pairs (seeds) to an unsettled
comparison and calls :func:`look` again; the error rates stay valid however often it looks
and whenever it stops, because each look uses boundaries that spend only part of alpha.

Method (the text of :data:`METHOD`, which the report prints):

- Paired differences d_i = metric(level) - metric(reference), as in ``study.report.stats``.
- Information fraction at a look with n pairs: t = min(n / max_pairs, 1); a look at
  n >= max_pairs is the final look (t = 1, all of alpha spent).
- Alpha spending (Lan & DeMets 1983), per side at one-sided level a:
  O'Brien-Fleming type f(t) = 2 - 2 Phi(z_{1-a/2} / sqrt(t)), Pocock type
  f(t) = a ln(1 + (e - 1) t); both reach a at t = 1.
- The test for a difference is two-sided at alpha (a = alpha/2 per side, symmetric
  boundaries); the equivalence bounds are one-sided at alpha on each side (a = alpha, the
  TOST analogue). With one look they are the fixed-n 95% and 90% intervals.
- Boundaries: Z_k has the canonical joint distribution (independent Brownian increments on
  the information scale). At each look the boundary c_k solves "probability of first
  crossing at look k, under no effect, equals f(t_k) - f(t_{k-1})", computed by recursive
  numerical integration over the continuation region (Armitage, McPherson & Rowe 1969;
  Jennison & Turnbull 2000, ch. 19) on a Simpson grid, with Brent's root finder. The
  fractions are the observed pair counts, so the boundaries follow looks that come late
  or early; an earlier boundary depends only on earlier fractions and never changes.
- Small n (Jennison & Turnbull's significance-level approach): the Z boundary's nominal
  one-sided p-value is turned into a t quantile with n_k - 1 degrees of freedom.
- Repeated confidence intervals (Jennison & Turnbull 1989, 1993): mean +- c_k sd/sqrt(n_k).
  Decision at each look, in this order: "equivalent" when the equivalence interval lies
  inside (-margin, +margin); else "higher"/"lower" when the difference interval excludes 0;
  else "continue", and "inconclusive" at the final look. Equivalence is checked first, as
  the fixed-n verdict does, so one look gives the fixed-n verdict; the order cannot raise
  either error rate, since each wrong decision needs its own interval to miss the truth.
- Degenerate input: NaN or infinite differences are refused (ValueError); a look with
  fewer than min_pairs pairs is no look (it spends nothing, decides "continue", and is
  skipped if it appears in a later history); sd = 0 makes both intervals the point mean.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

__all__ = ["DECISIONS", "METHOD", "SPENDINGS", "Design", "Look", "Simulation",
           "fixed_n_power", "fixed_n_same_power", "look", "simulate", "spent",
           "t_boundary", "verdict", "z_boundaries"]

SPENDINGS = ("obrien_fleming", "pocock")
DECISIONS = ("higher", "lower", "equivalent", "continue", "inconclusive")

METHOD = (
    "Group-sequential paired design: pairs are added to an unsettled comparison and it is "
    "looked at again, with boundaries that keep the error rates at alpha under optional "
    "stopping. Alpha is spent over the information fraction t = pairs / max_pairs by a "
    "Lan-DeMets spending function (O'Brien-Fleming or Pocock type); boundaries come from recursive "
    "numerical integration of the joint distribution of the successive z statistics, at "
    "the observed pair counts, and are turned into t quantiles with n - 1 degrees of "
    "freedom. At each look the repeated confidence interval mean +- c_k sd/sqrt(n) decides: "
    "equivalent when the interval built from one-sided alpha on each side lies inside "
    "+-margin (checked first), else better/worse when the interval built from two-sided "
    "alpha excludes 0, else add pairs, and inconclusive at the maximum "
    "(Jennison & Turnbull 1989, 1993)."
)

_Z_CAP = 12.0  # a boundary above this is infinite: crossing it has probability < 1e-32
_Z_TAIL = 9.0  # grids stop 9 standard deviations out: the mass beyond is below 1e-18
_MAX_GRID = 3001  # grid points per look at most (memory: a grid x grid kernel matrix)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Design:
    """A group-sequential paired design.

    Args:
        alpha: error rate of each wrong decision (false "differs" at no effect, false
            "equivalent" at an effect of +-margin), in (0, 0.5).
        margin: the equivalence margin in the metric's units (0.005 = 0.5 pp accuracy).
        max_pairs: the most pairs a comparison may get; the look that reaches it is final.
        looks: planned looks (the schedule of :meth:`planned_pairs`); the runner may look
            more or fewer times, alpha is spent by the pairs actually seen.
        spending: "obrien_fleming" (spends little early) or "pocock" (spends evenly).
        min_pairs: no look before this many pairs (a t interval needs a few pairs).
    """

    alpha: float
    margin: float
    max_pairs: int
    looks: int
    spending: str = "obrien_fleming"
    min_pairs: int = 5

    def __post_init__(self) -> None:
        if not _is_real(self.alpha) or not 0 < self.alpha < 0.5:
            raise ValueError(f"Design.alpha must be a number in (0, 0.5), got {self.alpha!r}")
        if not _is_real(self.margin) or self.margin <= 0:
            raise ValueError(f"Design.margin must be a finite number > 0 (in the metric's "
                             f"units), got {self.margin!r}")
        if self.spending not in SPENDINGS:
            raise ValueError(f"Design.spending must be one of {', '.join(SPENDINGS)}, got "
                             f"{self.spending!r}")
        if not _is_int(self.min_pairs) or self.min_pairs < 2:
            raise ValueError(f"Design.min_pairs must be an integer >= 2, got "
                             f"{self.min_pairs!r}")
        if not _is_int(self.max_pairs) or self.max_pairs < self.min_pairs:
            raise ValueError(f"Design.max_pairs must be an integer >= min_pairs "
                             f"({self.min_pairs}), got {self.max_pairs!r}")
        most = self.max_pairs - self.min_pairs + 1
        if not _is_int(self.looks) or not 1 <= self.looks <= most:
            raise ValueError(f"Design.looks must be an integer from 1 to max_pairs - "
                             f"min_pairs + 1 ({most}), got {self.looks!r}")

    def planned_pairs(self) -> tuple[int, ...]:
        """Pairs at each planned look: equally spaced up to max_pairs, the first at least
        min_pairs (then equally spaced from min_pairs)."""
        k, top = self.looks, self.max_pairs
        counts = [math.ceil(i * top / k) for i in range(1, k + 1)]
        if counts[0] < self.min_pairs:
            step = (top - self.min_pairs) / (k - 1)
            counts = [math.floor(self.min_pairs + i * step + 0.5) for i in range(k)]
        return tuple(counts)

    def method(self) -> str:
        """:data:`METHOD` with this design's spending function named."""
        name = "Pocock" if self.spending == "pocock" else "O'Brien-Fleming"
        return METHOD.replace("(O'Brien-Fleming or Pocock type)", f"({name} type)")


def spent(spending: str, level: float, t: float) -> float:
    """Alpha spent per side by information fraction `t` at one-sided level `level`."""
    t = min(t, 1.0)
    if t <= 0:
        return 0.0
    if spending == "obrien_fleming":
        return float(2 * stats.norm.sf(stats.norm.isf(level / 2) / math.sqrt(t)))
    if spending == "pocock":
        return float(level * math.log1p((math.e - 1) * t))
    raise ValueError(f"spending must be one of {', '.join(SPENDINGS)}, got {spending!r}")


def _simpson(lo: float, hi: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid points on [lo, hi] and their composite Simpson weights, spacing about `step`."""
    m = int(min(max(math.ceil((hi - lo) / step), 200), _MAX_GRID - 1))
    m += m % 2
    x = np.linspace(lo, hi, m + 1)
    w = np.ones(m + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return x, w * (hi - lo) / (3 * m)


def _region(c: float, t: float, sides: int) -> tuple[float, float]:
    """The continuation region on the score scale S = Z sqrt(t)."""
    hi = min(c, _Z_TAIL) * math.sqrt(t)
    return (-hi if sides == 2 else -_Z_TAIL * math.sqrt(t)), hi


def _crossing(u: np.ndarray, mass: np.ndarray, sd: float, c: float, t: float,
              sides: int) -> float:
    """Probability of continuing to the last look and crossing c at look t."""
    up = stats.norm.sf((c * math.sqrt(t) - u) / sd)
    if sides == 2:
        up = up + stats.norm.cdf((-c * math.sqrt(t) - u) / sd)
    return float(mass @ up)


def _solve(u: np.ndarray, mass: np.ndarray, sd: float, t: float, target: float,
           sides: int) -> float:
    """The boundary whose first-crossing probability at look t equals `target`."""
    if _crossing(u, mass, sd, _Z_CAP, t, sides) >= target:
        return math.inf
    lo = 0.0 if sides == 2 else -_Z_TAIL
    return float(optimize.brentq(lambda c: _crossing(u, mass, sd, c, t, sides) - target,
                                 lo, _Z_CAP, xtol=1e-10, rtol=1e-12))


def z_boundaries(fractions: Sequence[float], alpha: float, spending: str,
                 sides: int) -> tuple[float, ...]:
    """Z boundaries at the looks with these information fractions (increasing, in (0, 1]).

    sides=2: reject when |Z_k| >= c_k, total level `alpha` (alpha/2 spent per side);
    sides=1: reject when Z_k >= c_k, level `alpha`. An infinite boundary means the look
    could not stop (the spending function allows essentially nothing there). Cached.
    """
    fr = tuple(float(f) for f in fractions)
    if sides not in (1, 2):
        raise ValueError(f"sides must be 1 or 2, got {sides!r}")
    if not _is_real(alpha) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not fr or any(not 0 < f <= 1 for f in fr) or any(
            b <= a for a, b in zip(fr, fr[1:], strict=False)):
        raise ValueError(f"fractions must increase within (0, 1], got {fractions!r}")
    if spending not in SPENDINGS:
        raise ValueError(f"spending must be one of {', '.join(SPENDINGS)}, got {spending!r}")
    return _boundaries(fr, float(alpha), spending, sides)


@lru_cache(maxsize=512)
def _boundaries(fractions: tuple[float, ...], alpha: float, spending: str,
                sides: int) -> tuple[float, ...]:
    """:func:`z_boundaries` by recursive integration, once per distinct question."""
    cum = [sides * spent(spending, alpha / sides, f) for f in fractions]
    t0 = fractions[0]
    c = float(stats.norm.isf(cum[0] / sides)) if cum[0] > 0 else math.inf
    bounds = [c]
    u, w = _simpson(*_region(c, t0, sides), step=math.sqrt(t0) / 6)
    mass = w * stats.norm.pdf(u, scale=math.sqrt(t0))
    for k in range(1, len(fractions)):
        t, sd = fractions[k], math.sqrt(fractions[k] - fractions[k - 1])
        c = _solve(u, mass, sd, t, cum[k] - cum[k - 1], sides)
        bounds.append(c)
        if k + 1 < len(fractions):
            s, w = _simpson(*_region(c, t, sides), step=sd / 5)
            mass = w * (stats.norm.pdf((s[:, None] - u[None, :]) / sd) @ mass) / sd
            u = s
    return tuple(math.inf if b > _Z_CAP else b for b in bounds)


def t_boundary(z: np.ndarray | float, n: np.ndarray | int) -> np.ndarray:
    """The t quantile (n - 1 df) with the same one-sided nominal p-value as the Z boundary."""
    return np.asarray(stats.t.isf(stats.norm.sf(z), np.asarray(n) - 1), dtype=float)


def verdict(decision: str, mode: str) -> str:
    """The report's word for a decision: higher/lower become better/worse by the metric's
    mode ("max": higher is better; "min": lower is better)."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if decision in ("higher", "lower"):
        return "better" if (decision == "higher") == (mode == "max") else "worse"
    return decision


@dataclass(frozen=True)
class Look:
    """One look at a comparison's paired differences.

    `interval` is the repeated confidence interval for the difference (two-sided alpha),
    `eq_interval` the one for equivalence (alpha one-sided on each side); `boundary` and
    `eq_boundary` are their t critical values, `z_boundary` and `eq_z_boundary` the Z
    boundaries they came from. `spent` is the two-sided alpha spent so far by the
    difference test, `eq_spent` the one-sided alpha spent so far by each equivalence side.
    `index` is the look's number (1 for the first), 0 for a look below min_pairs, which is
    none. `next_pairs` is the pairs the next look should have, None when decided.
    """

    n: int
    mean: float
    sd: float
    interval: tuple[float, float]
    eq_interval: tuple[float, float]
    boundary: float
    eq_boundary: float
    z_boundary: float
    eq_z_boundary: float
    spent: float
    eq_spent: float
    index: int
    final: bool
    decision: str
    next_pairs: int | None


def _decide(mean: np.ndarray, se: np.ndarray, crit: np.ndarray, eq_crit: np.ndarray,
            margin: float, final: bool) -> tuple[np.ndarray, ...]:
    """Decisions of many looks at once, with both intervals (lo, hi, eq_lo, eq_hi)."""
    half = np.where(se == 0, 0.0, crit * se)  # sd 0: the interval is the point
    eq_half = np.where(se == 0, 0.0, eq_crit * se)
    lo, hi = mean - half, mean + half
    eq_lo, eq_hi = mean - eq_half, mean + eq_half
    decision = np.full(mean.shape, "inconclusive" if final else "continue", dtype=object)
    decision[lo > 0] = "higher"
    decision[hi < 0] = "lower"
    decision[(eq_lo > -margin) & (eq_hi < margin)] = "equivalent"  # checked first: wins
    return decision, lo, hi, eq_lo, eq_hi


def _finite_diffs(diffs: Sequence[float]) -> np.ndarray:
    try:
        d = np.asarray(diffs, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"diffs must be a sequence of numbers: {err}") from None
    if d.ndim != 1:
        raise ValueError(f"diffs must be one-dimensional, got shape {d.shape}")
    bad = np.flatnonzero(~np.isfinite(d))
    if bad.size:
        raise ValueError(f"diffs must be finite; diffs[{int(bad[0])}] is {d[bad[0]]} "
                         f"({bad.size} bad): leave out pairs with a failed arm before looking")
    return d


def _counted(design: Design, history: Sequence[int], n: int) -> tuple[int, ...]:
    """The earlier looks that spent alpha (those with at least min_pairs pairs)."""
    prev = 0
    for i, h in enumerate(history):
        if not _is_int(h) or not prev < h < n or h >= design.max_pairs:
            raise ValueError(
                f"history[{i}] = {h!r}: history must be the increasing pair counts of the "
                f"earlier looks, each below the current {n} pairs and below max_pairs "
                f"({design.max_pairs}), which ends the comparison")
        prev = h
    return tuple(int(h) for h in history if h >= design.min_pairs)


def _next_pairs(design: Design, n: int) -> int:
    return max(design.min_pairs, min(c for c in design.planned_pairs() if c > n))


def _no_look(design: Design, d: np.ndarray, spent_so_far: tuple[float, float]) -> Look:
    nan = math.nan
    n = len(d)
    mean = float(d.mean()) if n else nan
    sd = float(d.std(ddof=1)) if n > 1 else nan
    return Look(n, mean, sd, (nan, nan), (nan, nan), nan, nan, nan, nan, *spent_so_far, 0,
                False, "continue", _next_pairs(design, n))


def look(design: Design, diffs: Sequence[float], history: Sequence[int] = ()) -> Look:
    """Look at a comparison's paired differences (level minus reference).

    Args:
        design: the sequential design.
        diffs: every usable pair's difference so far (finite numbers; ValueError if not).
        history: the pair counts of the earlier looks, increasing (counts below
            min_pairs are skipped: they were no look).
    """
    d = _finite_diffs(diffs)
    n = len(d)
    earlier = _counted(design, history, n)
    fractions = tuple(c / design.max_pairs for c in earlier)
    if n < design.min_pairs:
        cum = [spent(design.spending, design.alpha / s, fractions[-1]) if fractions else 0.0
               for s in (2, 1)]
        return _no_look(design, d, (2 * cum[0], cum[1]))
    final = n >= design.max_pairs
    fractions += (1.0 if final else n / design.max_pairs,)
    z = z_boundaries(fractions, design.alpha, design.spending, 2)[-1]
    z_eq = z_boundaries(fractions, design.alpha, design.spending, 1)[-1]
    crit, eq_crit = t_boundary(z, n), t_boundary(z_eq, n)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    decision, lo, hi, eq_lo, eq_hi = _decide(
        np.array([mean]), np.array([sd / math.sqrt(n)]), crit, eq_crit, design.margin, final)
    go_on = decision[0] == "continue"
    return Look(n, mean, sd, (float(lo[0]), float(hi[0])), (float(eq_lo[0]), float(eq_hi[0])),
                float(crit), float(eq_crit), z, z_eq,
                2 * spent(design.spending, design.alpha / 2, fractions[-1]),
                spent(design.spending, design.alpha, fractions[-1]), len(fractions), final,
                str(decision[0]), _next_pairs(design, n) if go_on else None)


@dataclass(frozen=True)
class Simulation:
    """Outcome of many simulated sequential comparisons with normal paired differences.

    `rates` maps each final decision (higher, lower, equivalent, inconclusive) to the
    fraction of studies that ended with it; `mean_pairs` is the average pairs used and
    `pairs_sd` their standard deviation across studies.
    """

    effect: float
    sd: float
    n_studies: int
    rates: dict[str, float]
    mean_pairs: float
    pairs_sd: float
    naive: bool

    def mcse(self, decision: str) -> float:
        """Monte Carlo standard error of a decision's rate."""
        p = self.rates[decision]
        return math.sqrt(p * (1 - p) / self.n_studies)

    @property
    def settled(self) -> float:
        """The fraction of studies that ended with a verdict (not inconclusive)."""
        return 1.0 - self.rates["inconclusive"]


def _schedule_boundaries(design: Design, naive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Z boundaries (difference, equivalence) at the planned looks; naive: fixed-n ones."""
    counts = design.planned_pairs()
    if naive:
        k = len(counts)
        return (np.full(k, stats.norm.isf(design.alpha / 2)),
                np.full(k, stats.norm.isf(design.alpha)))
    fr = tuple(c / design.max_pairs for c in counts)
    return (np.array(z_boundaries(fr, design.alpha, design.spending, 2)),
            np.array(z_boundaries(fr, design.alpha, design.spending, 1)))


def simulate(design: Design, effect: float, sd: float, n_studies: int,
             rng: np.random.Generator, *, naive: bool = False) -> Simulation:
    """Run `n_studies` sequential comparisons at the planned looks, the paired differences
    drawn N(effect, sd^2), and count how each ended. naive=True looks with the fixed-n
    intervals at every look instead (what the design corrects)."""
    if not _is_int(n_studies) or n_studies < 1:
        raise ValueError(f"n_studies must be an integer >= 1, got {n_studies!r}")
    if not _is_real(sd) or sd < 0 or not _is_real(effect):
        raise ValueError(f"effect must be finite and sd finite and >= 0, got {effect!r}, "
                         f"{sd!r}")
    counts = design.planned_pairs()
    x = rng.normal(effect, sd, size=(n_studies, counts[-1]))
    z, z_eq = _schedule_boundaries(design, naive)
    outcome = np.full(n_studies, "", dtype=object)
    used = np.zeros(n_studies, dtype=int)
    for k, n in enumerate(counts):
        open_ = np.flatnonzero(outcome == "")
        xs = x[open_, :n]
        se = xs.std(axis=1, ddof=1) / math.sqrt(n)
        decision = _decide(xs.mean(axis=1), se, t_boundary(z[k], n), t_boundary(z_eq[k], n),
                           design.margin, k == len(counts) - 1)[0]
        stop = decision != "continue"
        outcome[open_[stop]] = decision[stop]
        used[open_[stop]] = n
    rates = {d: float(np.mean(outcome == d)) for d in DECISIONS if d != "continue"}
    return Simulation(float(effect), float(sd), n_studies, rates, float(used.mean()),
                      float(used.std()), naive)


def fixed_n_power(n: int | np.ndarray, effect: float, sd: float, *, alpha: float,
                  margin: float) -> np.ndarray:
    """Probability that the fixed-n paired verdict of ``study.report.stats`` with n pairs is
    settled (equivalent, better or worse), for normal differences N(effect, sd^2): exact
    but for quadrature over the sample sd (400 quantiles of its chi distribution)."""
    if not _is_real(sd) or sd < 0 or not _is_real(effect):
        raise ValueError(f"effect must be finite and sd finite and >= 0, got {effect!r}, "
                         f"{sd!r}")
    n = np.atleast_1d(np.asarray(n, dtype=float))[:, None]
    if np.any(n < 2):
        raise ValueError(f"n must be at least 2 pairs, got {n.min():g}")
    q = (np.arange(400) + 0.5) / 400
    s = sd * np.sqrt(stats.chi2.ppf(q[None, :], n - 1) / (n - 1))  # sample sd quantiles
    se_true = sd / np.sqrt(n)
    a = stats.t.ppf(1 - alpha / 2, n - 1) * s / np.sqrt(n)  # |mean| > a: differs
    b = margin - stats.t.ppf(1 - alpha, n - 1) * s / np.sqrt(n)  # |mean| < b: equivalent
    if sd == 0:  # every pair equal: settled, equivalent at 0 and differs elsewhere
        return np.ones(n.shape[0])
    p_diff = stats.norm.sf((a - effect) / se_true) + stats.norm.cdf((-a - effect) / se_true)
    p_eq = np.where(b > 0, stats.norm.cdf((b - effect) / se_true)
                    - stats.norm.cdf((-b - effect) / se_true), 0.0)
    return np.where(b > a, 1.0, p_diff + p_eq).mean(axis=1)


def fixed_n_same_power(design: Design, effect: float, sd: float, power: float, *,
                       most: int | None = None) -> int | None:
    """The fewest pairs of a fixed-n paired design (``study.report.stats``'s verdict, same
    alpha and margin) that settles the comparison at least as often as `power` (e.g. a
    :class:`Simulation`'s `settled`); None if not reached by `most` pairs (default
    20 * max_pairs)."""
    if not _is_real(power) or not 0 <= power <= 1:
        raise ValueError(f"power must be a probability, got {power!r}")
    most = most or 20 * design.max_pairs
    n = np.arange(2, most + 1)
    ok = np.flatnonzero(fixed_n_power(n, effect, sd, alpha=design.alpha,
                                      margin=design.margin) >= power)
    return int(n[ok[0]]) if ok.size else None
