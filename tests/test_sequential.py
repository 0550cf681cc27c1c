"""Group-sequential paired verdicts: boundaries against published tables, error rates
under optional stopping by simulation, decisions on hand-made differences, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from study.report.sequential import (
    Design,
    fixed_n_power,
    fixed_n_same_power,
    look,
    simulate,
    spent,
    verdict,
    z_boundaries,
)
from study.report.stats import paired_effects

FIVE = (0.2, 0.4, 0.6, 0.8, 1.0)


# Lan-DeMets boundaries as ldbounds / gsDesign print them (two-sided 0.05 = 0.025 per
# side, K = 5 equally spaced) and as SeqBounds.jl's README prints its one-sided example.
@pytest.mark.parametrize("fractions, alpha, spending, sides, published", [
    (FIVE, 0.05, "obrien_fleming", 2, (4.8769, 3.3569, 2.6803, 2.2898, 2.0310)),
    (FIVE, 0.05, "pocock", 2, (2.4380, 2.4268, 2.4101, 2.3966, 2.3859)),
    ((0.25, 0.5, 0.75, 1.0), 0.05, "obrien_fleming", 1, (3.74955, 2.53993, 2.01604, 1.72014)),
    ((1.0,), 0.05, "obrien_fleming", 2, (1.95996,)),
    ((1.0,), 0.05, "pocock", 1, (1.64485,)),
])
def test_boundaries_match_published_tables(fractions, alpha, spending, sides, published):
    got = z_boundaries(fractions, alpha, spending, sides)
    assert got == pytest.approx(published, abs=0.002)


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
@pytest.mark.parametrize("sides", [1, 2])
def test_boundaries_spend_exactly_the_alpha_at_uneven_looks(spending, sides):
    """Brownian motion at uneven observed fractions (looks late, early, a failed run):
    the boundaries cross with the spent probability, look by look; earlier boundaries
    do not depend on later looks."""
    fr = (0.15, 0.45, 0.5, 0.8, 1.0)
    c = np.array(z_boundaries(fr, 0.1, spending, sides))
    assert z_boundaries(fr[:3], 0.1, spending, sides) == tuple(c[:3])
    rng = np.random.default_rng(7)
    steps = rng.normal(size=(200_000, len(fr))) * np.sqrt(np.diff((0.0, *fr)))
    z = np.cumsum(steps, axis=1) / np.sqrt(fr)
    hit = (np.abs(z) if sides == 2 else z) >= c
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), len(fr))
    for k, t in enumerate(fr):
        expected = sides * spent(spending, 0.1 / sides, t)
        got = np.mean(first <= k)
        assert abs(got - expected) < 4 * math.sqrt(expected * (1 - expected) / 200_000) + 1e-4


def _false_rate_bound(alpha: float, n: int) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / n)


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_error_rates_hold_under_optional_stopping(spending):
    """10,000 sequential studies per effect, 5 looks from 8 pairs: false 'differs' at no
    effect and false 'equivalent' at +-margin stay within alpha + 3 MCSE; looking with
    fixed-n intervals at the same looks does not."""
    design = Design(alpha=0.05, margin=0.5, max_pairs=40, looks=5, spending=spending,
                    min_pairs=8)
    assert design.planned_pairs() == (8, 16, 24, 32, 40)
    n, bound = 10_000, _false_rate_bound(0.05, 10_000)
    null = simulate(design, 0.0, 1.2, n, np.random.default_rng(11))
    assert null.rates["higher"] + null.rates["lower"] <= bound
    for effect in (0.5, -0.5):
        edge = simulate(design, effect, 1.2, n, np.random.default_rng(12))
        assert edge.rates["equivalent"] <= bound
    naive = simulate(design, 0.0, 1.2, n, np.random.default_rng(11), naive=True)
    assert naive.rates["higher"] + naive.rates["lower"] > bound + 0.03
    assert sum(null.rates.values()) == pytest.approx(1.0)


def test_simulate_decides_like_look_study_by_study():
    design = Design(alpha=0.05, margin=0.5, max_pairs=40, looks=5, min_pairs=8)
    for seed in range(30):
        sim = simulate(design, 0.4, 1.2, 1, np.random.default_rng(seed))
        x = np.random.default_rng(seed).normal(0.4, 1.2, size=(1, 40))[0]
        history: list[int] = []
        n = 8
        while True:
            lk = look(design, x[:n], history)
            if lk.decision != "continue":
                break
            history.append(n)
            n = lk.next_pairs
        assert sim.rates[lk.decision] == 1.0 and sim.mean_pairs == lk.n


def _rows(diffs):
    """A study table with one configuration whose pairs differ by `diffs`."""
    rows = []
    for seed, d in enumerate(diffs):
        for level, v in ((True, 0.9), (False, 0.9 + d)):
            rows.append({"config": 0, "seed": seed, "level": level, "status": "completed",
                         "acc": v})
    return rows


@pytest.mark.parametrize("diffs", [
    [0.001, -0.002, 0.0005, 0.0015, -0.001, 0.0, 0.002, -0.0005],  # equivalent
    [0.02, 0.025, 0.018, 0.03, 0.022, 0.019],  # better
    [-0.02, -0.025, -0.018, -0.03, -0.022, -0.019],  # worse
    [0.01, -0.008, 0.012, -0.004, 0.009],  # inconclusive
])
def test_one_look_is_the_fixed_n_verdict(diffs):
    e, = paired_effects(_rows(diffs), knob="bias", levels=[True, False], metric="acc",
                        margin=0.005)
    n = len(diffs)
    lk = look(Design(alpha=0.05, margin=0.005, max_pairs=n, looks=1), diffs)
    assert verdict(lk.decision, "max") == e.verdict
    assert lk.interval == pytest.approx((e.ci_low, e.ci_high), abs=1e-9)
    assert lk.final and lk.index == 1 and lk.spent == pytest.approx(0.05)


def test_equivalence_wins_when_both_fire():
    """A small, certain effect inside the margin: the difference interval excludes 0 and
    the equivalence interval fits inside the margin; the verdict is equivalent."""
    design = Design(alpha=0.05, margin=0.5, max_pairs=20, looks=2, min_pairs=5)
    lk = look(design, [0.2, 0.21, 0.19, 0.2, 0.205, 0.195, 0.2, 0.21, 0.19, 0.2])
    assert lk.interval[0] > 0
    assert lk.eq_interval[0] > -0.5 and lk.eq_interval[1] < 0.5
    assert lk.decision == "equivalent" and lk.next_pairs is None


def test_decisions_along_a_study():
    design = Design(alpha=0.05, margin=0.5, max_pairs=40, looks=5, min_pairs=8)
    rng = np.random.default_rng(3)
    noisy = rng.normal(0.0, 3.0, size=40)
    first = look(design, noisy[:8])
    assert first.decision == "continue" and first.next_pairs == 16 and first.index == 1
    assert first.interval[0] < 0 < first.interval[1]
    # a clear effect stops early: 'higher', better when higher is better
    big = look(design, rng.normal(3.0, 1.0, size=16), [8])
    assert big.decision == "higher" and verdict(big.decision, "min") == "worse"
    assert look(design, rng.normal(-3.0, 1.0, size=16), [8]).decision == "lower"
    # at the maximum, unsettled: inconclusive, with all of alpha spent
    end = look(design, noisy, [8, 16, 24, 32])
    assert end.decision == "inconclusive" and end.final and end.next_pairs is None
    assert end.spent == pytest.approx(0.05) and end.eq_spent == pytest.approx(0.05)


def test_observed_counts_set_the_boundaries():
    """Looks at 8, 17 and 25 pairs (a run failed, one was added) use those fractions."""
    design = Design(alpha=0.05, margin=0.5, max_pairs=40, looks=5, min_pairs=8)
    lk = look(design, np.linspace(-3, 3, 25), [8, 17])
    fr = (8 / 40, 17 / 40, 25 / 40)
    assert lk.z_boundary == z_boundaries(fr, 0.05, "obrien_fleming", 2)[-1]
    assert lk.eq_z_boundary == z_boundaries(fr, 0.05, "obrien_fleming", 1)[-1]
    assert lk.boundary == pytest.approx(stats.t.isf(stats.norm.sf(lk.z_boundary), 24))
    assert lk.index == 3 and lk.next_pairs == 32
    # beyond max_pairs: final, fraction 1
    over = look(design, np.linspace(-1, 1, 43), [8, 17, 25])
    assert over.final and over.spent == pytest.approx(0.05)


@pytest.mark.parametrize("value, decision", [(0.3, "equivalent"), (0.0, "equivalent"),
                                             (0.7, "higher"), (-0.7, "lower")])
def test_all_differences_equal(value, decision):
    lk = look(Design(alpha=0.05, margin=0.5, max_pairs=40, looks=5), [value] * 8)
    assert lk.sd == 0 and lk.interval == (value, value) and lk.decision == decision


@pytest.mark.parametrize("n", [0, 1, 4])
def test_too_few_pairs_is_no_look(n):
    design = Design(alpha=0.05, margin=0.5, max_pairs=40, looks=5, min_pairs=5)
    lk = look(design, [0.1] * n)
    assert lk.decision == "continue" and lk.index == 0 and lk.spent == 0
    assert lk.next_pairs == 8
    # ... and a later look that lists it in its history is the same as one that does not
    d = np.linspace(-1, 2, 16)
    assert look(design, d, [n, 8] if n else [8]) == look(design, d, [8])


@pytest.mark.parametrize("bad", [[0.1, math.nan, 0.2, 0.1, 0.0], [math.inf] * 6,
                                 [0.1, 0.2, -math.inf, 0.3, 0.4, 0.5], ["a"] * 6,
                                 [[0.1, 0.2]] * 6])
def test_bad_differences_are_refused(bad):
    with pytest.raises(ValueError, match="diffs"):
        look(Design(alpha=0.05, margin=0.5, max_pairs=40, looks=5), bad)


@pytest.mark.parametrize("history", [[16, 8], [8, 8], [10], [12.0], [True], [40], ["8"],
                                     [8, 20]])
def test_bad_history_is_refused(history):
    design = Design(alpha=0.05, margin=0.5, max_pairs=40, looks=5, min_pairs=5)
    with pytest.raises(ValueError, match="history"):
        look(design, np.zeros(10) + 0.1, history)


@pytest.mark.parametrize("kwargs, field", [
    ({"alpha": 0}, "alpha"), ({"alpha": 0.5}, "alpha"), ({"alpha": math.nan}, "alpha"),
    ({"alpha": "0.05"}, "alpha"), ({"margin": 0}, "margin"), ({"margin": -0.1}, "margin"),
    ({"margin": math.inf}, "margin"), ({"max_pairs": 3}, "max_pairs"),
    ({"max_pairs": 40.0}, "max_pairs"), ({"looks": 0}, "looks"), ({"looks": 37}, "looks"),
    ({"looks": True}, "looks"), ({"spending": "obf"}, "spending"),
    ({"min_pairs": 1}, "min_pairs"), ({"min_pairs": 41}, "max_pairs"),
])
def test_design_validation(kwargs, field):
    args = {"alpha": 0.05, "margin": 0.5, "max_pairs": 40, "looks": 5, **kwargs}
    with pytest.raises(ValueError, match=f"Design.{field} must be") as err:
        Design(**args)
    assert repr(next(iter(kwargs.values()))) in str(err.value)


@pytest.mark.parametrize("max_pairs, looks, min_pairs, plan", [
    (40, 5, 8, (8, 16, 24, 32, 40)), (60, 5, 5, (12, 24, 36, 48, 60)),
    (60, 5, 20, (20, 30, 40, 50, 60)), (30, 1, 5, (30,)), (10, 6, 5, (5, 6, 7, 8, 9, 10)),
    (41, 3, 5, (14, 28, 41)),
])
def test_planned_pairs(max_pairs, looks, min_pairs, plan):
    assert Design(0.05, 0.5, max_pairs, looks, min_pairs=min_pairs).planned_pairs() == plan


def test_planned_pairs_always_increase_to_the_maximum():
    for top in range(2, 40):
        for lo in range(2, top + 1):
            for k in range(1, top - lo + 2):
                plan = Design(0.05, 0.5, top, k, min_pairs=lo).planned_pairs()
                assert len(plan) == k and plan[0] >= lo and plan[-1] == top
                assert all(b > a for a, b in zip(plan, plan[1:], strict=False))


def test_fixed_n_power_matches_a_simulation_of_the_fixed_verdict():
    n, effect, sd, alpha, margin = 12, 0.3, 1.0, 0.05, 0.5
    x = np.random.default_rng(5).normal(effect, sd, size=(40_000, n))
    m, se = x.mean(axis=1), x.std(axis=1, ddof=1) / math.sqrt(n)
    differs = np.abs(m) > stats.t.ppf(1 - alpha / 2, n - 1) * se
    equiv = np.abs(m) < margin - stats.t.ppf(1 - alpha, n - 1) * se
    got = float(fixed_n_power(n, effect, sd, alpha=alpha, margin=margin)[0])
    assert got == pytest.approx(np.mean(differs | equiv), abs=0.01)


def test_fixed_n_same_power_is_the_smallest_such_n():
    design = Design(alpha=0.05, margin=0.5, max_pairs=40, looks=5, min_pairs=8)
    sim = simulate(design, 1.0, 1.2, 4000, np.random.default_rng(1))
    n = fixed_n_same_power(design, 1.0, 1.2, sim.settled)
    power = fixed_n_power(np.array([n - 1, n]), 1.0, 1.2, alpha=0.05, margin=0.5)
    assert power[0] < sim.settled <= power[1]
    assert fixed_n_same_power(design, 0.0, 1.2, 1.0, most=50) is None


@pytest.mark.parametrize("fractions, alpha, spending, sides", [
    ((), 0.05, "pocock", 2), ((0.5, 0.5), 0.05, "pocock", 2), ((0.0, 1.0), 0.05, "pocock", 2),
    ((0.5, 1.2), 0.05, "pocock", 2), ((0.6, 0.3), 0.05, "pocock", 2),
    ((1.0,), 0.0, "pocock", 2), ((1.0,), 1.5, "pocock", 2), ((1.0,), 0.05, "linear", 2),
    ((1.0,), 0.05, "pocock", 3),
])
def test_bad_boundary_questions_are_refused(fractions, alpha, spending, sides):
    with pytest.raises(ValueError, match="fractions|alpha|spending|sides"):
        z_boundaries(fractions, alpha, spending, sides)


def test_method_names_the_spending_function():
    assert "(Pocock type)" in Design(0.05, 0.5, 40, 5, spending="pocock").method()
    assert "(O'Brien-Fleming type)" in Design(0.05, 0.5, 40, 5).method()
    assert z_boundaries([0.5, 1], 0.05, "pocock", 2) == z_boundaries((0.5, 1.0), 0.05,
                                                                       "pocock", 2)
