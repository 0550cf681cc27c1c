"""Expected best score against budget: exact order statistics against enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from study.report.budget import best_of_weights, expected_best


def _brute(scores, n, mode):
    best = max if mode == "max" else min
    values = [best(c) for c in itertools.combinations(scores, n)]
    return float(np.mean(values)), float(np.std(values))


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("scores", [
    [0.7], [0.3, 0.9], [0.5, 0.5, 0.5], [0.91, 0.88, 0.95, 0.88, 0.97, 0.93, 0.95],
    [3.0, -1.0, 2.5, 10.0, 2.5, 0.0], list(np.random.default_rng(0).normal(size=8)),
])
def test_exact_against_enumeration(scores, mode):
    curve = expected_best(scores, mode)
    assert curve.n == tuple(range(1, len(scores) + 1)) and curve.mode == mode
    for n in curve.n:
        mean, sd = _brute(scores, n, mode)
        assert curve.mean[n - 1] == pytest.approx(mean, abs=1e-12)
        assert curve.sd[n - 1] == pytest.approx(sd, abs=1e-9)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_monotone_from_the_mean_to_the_best(mode):
    scores = np.random.default_rng(1).uniform(0.8, 0.99, size=300)
    curve = expected_best(scores, mode)
    step = np.diff(curve.mean) * (1 if mode == "max" else -1)
    assert np.all(step >= -1e-12)
    assert curve.mean[0] == pytest.approx(scores.mean())
    best = scores.max() if mode == "max" else scores.min()
    assert curve.mean[-1] == pytest.approx(best, abs=1e-12) and curve.sd[-1] == 0


def test_large_n_is_stable():
    w = best_of_weights(3000)
    assert np.all(np.isfinite(w)) and np.allclose(w.sum(axis=1), 1.0)
    curve = expected_best(np.linspace(0.0, 1.0, 3000))
    assert all(math.isfinite(x) for x in curve.mean + curve.sd)


@pytest.mark.parametrize("scores, mode", [
    ([], "max"), ([0.1, math.nan], "max"), ([math.inf, 0.2], "min"), (["a", "b"], "max"),
    ([[0.1, 0.2]], "max"), ([0.1, 0.2], "maximize"), ([0.1], None),
])
def test_bad_input_is_refused(scores, mode):
    with pytest.raises(ValueError, match="scores|mode"):
        expected_best(scores, mode)
