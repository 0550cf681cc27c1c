"""Analysis on synthetic run tables: known effects recovered, no effect -> equivalent."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study.report.stats import curves, paired_effects

LEVELS = [True, False]


def table(effect, n_configs=8, seeds=5, noise=0.01, config_sd=0.03, seed=0, norm_effect=None):
    """Runs of a bias on/off study: accuracy = config base + seed noise (+ effect if off)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_configs):
        base = 0.9 + rng.normal(0, config_sd)
        norm = "batch" if c % 2 else "none"
        eff = effect if norm_effect is None else norm_effect[norm]
        for s in range(seeds):
            shared = rng.normal(0, noise)  # the pair shares init and batches
            for lvl in LEVELS:
                v = base + shared + (eff if lvl is False else 0.0) + rng.normal(0, noise / 4)
                rows.append({"config": c, "seed": s, "level": lvl, "status": "completed",
                             "test_accuracy": v, "param.norm": norm, "param.depth": c % 4 + 1,
                             "run_key": f"c{c}-{lvl}-s{s}"})
    return rows


def test_known_effect_is_recovered_inside_the_ci():
    true = 0.02
    (e,) = paired_effects(table(true), knob="bias", levels=LEVELS, metric="test_accuracy",
                          margin=0.005)
    assert e.n == 40 and e.ci_low < true < e.ci_high
    assert e.ci_low > 0 and e.verdict == "better" and e.p_value < 1e-6
    assert math.isclose(e.mean, e.mean_level - e.mean_reference, abs_tol=1e-12)
    (w,) = paired_effects(table(-0.02), knob="bias", levels=LEVELS, metric="test_accuracy",
                          margin=0.005)
    assert w.verdict == "worse" and w.ci_high < 0
    # for a loss (lower is better) the same sign reads the other way
    rows = [dict(r, val_loss=r["test_accuracy"]) for r in table(0.02)]
    (lo,) = paired_effects(rows, knob="bias", levels=LEVELS, metric="val_loss", margin=0.005,
                           mode="min")
    assert lo.verdict == "worse"


def test_no_effect_is_equivalent_and_small_n_is_inconclusive():
    (e,) = paired_effects(table(0.0), knob="bias", levels=LEVELS, metric="test_accuracy",
                          margin=0.005)
    assert e.verdict == "equivalent" and e.tost_p < 0.05
    assert -0.005 < e.ci_low < e.ci_high < 0.005
    (few,) = paired_effects(table(0.0, n_configs=1, seeds=3, noise=0.02), knob="bias",
                            levels=LEVELS, metric="test_accuracy", margin=0.005)
    assert few.verdict == "inconclusive" and few.pairs_needed and few.pairs_needed > 3
    assert "inconclusive; about" in few.sentence()


def test_coverage_of_the_interval():
    """Over 200 simulated studies the 95% CI holds the true effect about 95% of the time."""
    hits = 0
    for s in range(200):
        (e,) = paired_effects(table(0.01, n_configs=3, seeds=3, seed=s), knob="bias",
                              levels=LEVELS, metric="test_accuracy", margin=0.005)
        hits += e.ci_low <= 0.01 <= e.ci_high
    assert 0.90 <= hits / 200 <= 0.99


def test_pair_with_failed_arm_is_excluded_and_counted():
    rows = table(0.02)
    rows[1]["status"] = "failed"  # config 0, seed 0, bias=False
    rows[1]["test_accuracy"] = None
    rows[2]["status"] = "diverged"  # config 0, seed 1, bias=True: kept with its value
    (e,) = paired_effects(rows, knob="bias", levels=LEVELS, metric="test_accuracy",
                          margin=0.005)
    assert e.n == 39 and e.excluded_pairs == 1 and e.diverged_pairs == 1
    assert "1 pair(s) excluded for a failed arm" in e.sentence()
    missing = [r for r in rows if not (r["config"] == 1 and r["seed"] == 0 and not r["level"])]
    (m,) = paired_effects(missing, knob="bias", levels=LEVELS, metric="test_accuracy",
                          margin=0.005)
    assert m.n == 38 and m.excluded_pairs == 2


def test_breakdown_by_a_factor_and_more_levels():
    rows = table(0.0, norm_effect={"batch": 0.0, "none": 0.03})
    effects = paired_effects(rows, knob="bias", levels=LEVELS, metric="test_accuracy",
                             margin=0.005, by="norm")
    by = {e.group: e for e in effects}
    assert set(by) == {"all", "norm=none", "norm=batch"}
    assert by["norm=batch"].verdict == "equivalent" and by["norm=none"].verdict == "better"
    assert by["norm=none"].n + by["norm=batch"].n == by["all"].n
    three = [dict(r, level={True: 0.0, False: 1.0}[r["level"]]) for r in rows]
    three += [dict(r, level=0.01) for r in three if r["level"] == 0.0]
    effects = paired_effects(three, knob="bias_init", levels=[0.0, 0.01, 1.0],
                             metric="test_accuracy", margin=0.005)
    assert [(e.reference, e.level) for e in effects] == [(0.0, 0.01), (0.0, 1.0)]
    assert effects[0].mean == 0.0 and effects[0].verdict == "equivalent"


def test_curves_have_mean_spread_and_n():
    rows = table(0.0)
    rows[0]["status"] = "failed"
    cs = curves(rows, x="depth", metric="test_accuracy", split=("norm",))
    assert set(cs) == {"norm=none", "norm=batch"}
    pts = cs["norm=none"]
    assert [p.x for p in pts] == [1, 3]
    assert pts[0].n == 2 * 5 * 2 - 1 and pts[0].sd > 0


def test_needs_two_levels():
    with pytest.raises(ValueError, match="two levels"):
        paired_effects([], knob="bias", levels=[True], metric="test_accuracy", margin=0.01)
