"""Expected best score against budget (Dodge et al. 2019, "Show Your Work").

Given the N scores a search observed (one per configuration), the expected best score
among n configurations drawn at random without replacement from them, for n = 1..N, and
its standard deviation across such draws. Exact, by order statistics: with the scores
sorted from worst to best, v_(1) .. v_(N), the best of a random n-subset is v_(i) with
probability C(i - 1, n - 1) / C(N, n) (the subset holds position i and n - 1 of the i - 1
worse ones), the unbiased without-replacement estimator (Tang et al. 2020). The weights
are computed from log-binomials, so large N neither overflows nor loses precision. Ties
need no care: positions, not values, carry the weights. numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = ["BudgetCurve", "best_of_weights", "expected_best"]


@dataclass(frozen=True)
class BudgetCurve:
    """Expected best score (`mean`) and its standard deviation (`sd`) after n[j]
    configurations, n = 1..N; `mode` says whether best is the highest or the lowest."""

    n: tuple[int, ...]
    mean: tuple[float, ...]
    sd: tuple[float, ...]
    mode: str


def _log_binom(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return special.gammaln(a + 1) - special.gammaln(b + 1) - special.gammaln(a - b + 1)


def best_of_weights(n_scores: int) -> np.ndarray:
    """Matrix W (N x N): W[n-1, i-1] is the probability that the best of a random n-subset
    is the i-th worst score; each row sums to 1."""
    n = np.arange(1, n_scores + 1, dtype=float)[:, None]
    i = np.arange(1, n_scores + 1, dtype=float)[None, :]
    ok = i >= n
    log_w = _log_binom(np.where(ok, i - 1, 0.0), np.where(ok, n - 1, 0.0)) \
        - _log_binom(np.full_like(n, n_scores), n)
    return np.where(ok, np.exp(np.where(ok, log_w, 0.0)), 0.0)


def expected_best(scores: Sequence[float], mode: str = "max") -> BudgetCurve:
    """Expected best of n configurations drawn without replacement from `scores`.

    Args:
        scores: one finite score per configuration (leave failed ones out first).
        mode: "max" if higher is better, "min" if lower is better.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    try:
        v = np.asarray(scores, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"scores must be a sequence of numbers: {err}") from None
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"scores must be a non-empty list of numbers, got shape {v.shape}")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"scores must be finite; scores[{int(bad[0])}] is {v[bad[0]]}")
    v = np.sort(v) if mode == "max" else np.sort(v)[::-1]  # worst first
    w = best_of_weights(v.size)
    mean = w @ v
    var = np.einsum("ij,ij->i", w, (v[None, :] - mean[:, None]) ** 2)
    return BudgetCurve(tuple(range(1, v.size + 1)), tuple(float(m) for m in mean),
                       tuple(math.sqrt(max(float(x), 0.0)) for x in var), mode)
