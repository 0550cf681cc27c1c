"""Designed sweeps (grid sampler), multi-objective searches (Pareto fronts), Fashion-MNIST."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import study.spec.dataset as spec_dataset
from study.records import ConfigRecord, StudyResult, dominates, nondominated
from study.report.build import ReportInput, build_report
from study.report.pareto import level_fronts
from study.report.stats import curves
from study.search.searcher import BlockSearcher
from study.spec import SpecError, load_spec, parse_spec
from study.spec.grid import grid_size, grid_values
from tests.conftest import SPECS, tiny_spec
from tests.test_searcher import drive, fake_metric

GRID_SPACE = {"depth": {"int": [1, 5], "step": 2}, "norm": {"choice": ["batch", "none"]},
              "lr": {"float": [0.01, 0.03], "step": 0.01}}


def grid_spec(**over):
    raw = tiny_spec(space=GRID_SPACE, search={"sampler": "grid", "seed": 5, "pending": 2},
                    model={"name": "cnn", "width": 4}, repeats=2)
    raw.update(over)
    return parse_spec(raw)


# -- grid: the spec --


def test_grid_trials_default_to_every_point_of_the_grid():
    s = grid_spec()
    assert s.trials == 3 * 2 * 3 == grid_size(s.space)
    assert grid_values(s.space["depth"]) == [1, 3, 5]
    assert grid_values(s.space["lr"]) == [0.01, 0.02, 0.03]  # not 0.030000000000000002
    assert "18 configs x 2 levels x 2 seeds" in s.summary()
    assert grid_spec(search={"sampler": "grid", "trials": 4}).trials == 4  # a partial grid
    # a condition on the compared knob always holds: no point repeats
    cond = grid_spec(space={**GRID_SPACE, "bias_init": {"choice": [0.0, 1.0],
                                                         "when": {"bias": True}}})
    assert cond.trials == 36


@pytest.mark.parametrize("space, search, field, words", [
    ({"lr": {"float": [0.01, 0.1]}}, {}, "space.lr", "step"),
    ({"lr": {"log": [0.01, 0.1]}}, {}, "space.lr", "choice"),
    ({"depth": {"int": [1, 3]}, "lr": {"choice": [0.01, 0.1], "when": {"depth": [1, 2]}}},
     {}, "space.lr.when", "unconditionally"),
    ({"depth": {"int": [1, 2048]}, "fc_width": {"int": [1, 65536]}}, {}, "space",
     "at most 10000 points"),
    ({"lr": {"float": [0.0, 10.0], "step": 1e-9}}, {}, "space", "larger steps"),
    ({"depth": {"int": [1, 3]}}, {"trials": 4}, "search.trials", "at most the grid's 3"),
    ({"depth": {"int": [1, 3]}}, {"trials": "all"}, "search.trials", "integer"),
])
def test_a_grid_that_cannot_run_is_refused_naming_field_and_fix(space, search, field, words):
    with pytest.raises(SpecError) as e:
        parse_spec(tiny_spec(space=space, search={"sampler": "grid", **search}))
    assert f"field `{field}`" in str(e.value) and words in str(e.value)


# -- grid: the searcher --


@pytest.mark.parametrize("slots, order", [(1, 0), (8, 2)])
def test_grid_runs_every_point_once_in_one_order_and_ends(tmp_path, slots, order):
    s = grid_spec()
    searcher, st = drive(s, order, slots, f"sqlite:///{tmp_path}/o.db")
    points = [tuple(sorted(c.params.items())) for c in searcher.configs]
    every = {tuple(sorted(zip(["depth", "lr", "norm"], p, strict=True)))
             for p in itertools.product([1, 3, 5], [0.01, 0.02, 0.03], ["batch", "none"])}
    assert len(points) == len(every) and set(points) == every
    assert searcher.suggest("after") == "FINISHED"
    assert [t.state for t in st.get_trials()] == [TrialState.COMPLETE] * len(every)
    again, _ = drive(s, order + 7, 2, f"sqlite:///{tmp_path}/again.db")
    assert [c.params for c in again.configs] == [c.params for c in searcher.configs]


def test_a_grid_resumes_with_the_points_not_yet_run(tmp_path):
    s = grid_spec()
    url = f"sqlite:///{tmp_path}/o.db"
    straight, _ = drive(s, 0, 2, url)
    first = BlockSearcher(s, storage=optuna.storages.RDBStorage(url), study_name="cut")
    done = {}
    for n in range(9):  # some blocks run, then the driver dies
        block = first.suggest(f"t{n}")["block"]
        first.on_trial_complete(f"t{n}", {"runs": {r["run_key"]: {
            s.metric: fake_metric(r), "status": "completed"} for r in block}})
        done.update({r["run_key"]: fake_metric(r) for r in block})
    second = BlockSearcher(s, storage=optuna.storages.RDBStorage(url), study_name="cut")
    assert second.restore_progress(done) == s.total_runs - len(done)
    n = 0
    while (cfg := second.suggest(f"r{n}")) != "FINISHED":
        assert cfg is not None
        second.on_trial_complete(f"r{n}", {"runs": {r["run_key"]: {
            s.metric: fake_metric(r), "status": "completed"} for r in cfg["block"]}})
        n += 1
    assert [c.params for c in second.configs] == [c.params for c in straight.configs]


# -- curves: every point with its interval and n --


def test_curve_points_carry_a_t_interval_and_n():
    rows = [{"status": "completed", "param.depth": d, "param.norm": "batch",
             "test_accuracy": 0.5 + 0.01 * d + 0.01 * s} for d in (1, 2) for s in range(4)]
    rows.append({"status": "failed", "param.depth": 3, "param.norm": "batch"})
    rows.append({"status": "completed", "param.depth": 3, "param.norm": "batch",
                 "test_accuracy": 0.7})
    (pts,) = curves(rows, x="depth", metric="test_accuracy", split=("norm",)).values()
    assert [(p.x, p.n) for p in pts] == [(1, 4), (2, 4), (3, 1)]
    sd = float(np.std([0.0, 0.01, 0.02, 0.03], ddof=1))
    half = 3.182446305284263 * sd / 2  # t(0.975, 3) * sd / sqrt(4)
    assert math.isclose(pts[0].ci_high - pts[0].mean, half, rel_tol=1e-9)
    assert math.isclose(pts[0].mean - pts[0].ci_low, half, rel_tol=1e-9)
    assert math.isnan(pts[2].ci_low) and pts[2].sd == 0.0


def test_a_grid_report_draws_a_curve_per_value_of_the_other_knob():
    s = parse_spec(tiny_spec(space={"depth": {"int": [1, 5], "step": 2},
                                    "width": {"choice": [2, 4]}},
                             search={"sampler": "grid"}, compare={"residual": [False, True]},
                             model={"name": "cnn", "norm": "batch"}), check_paths=False)
    rows = [{"config": c, "seed": seed, "level": lvl, "status": "completed",
             "run_key": f"c{c}-{lvl}-{seed}", "pair": f"c{c}-{seed}",
             "test_accuracy": 0.5 + 0.01 * d + 0.02 * w + 0.001 * seed,
             "param.depth": d, "param.width": w, "param.residual": lvl}
            for c, (d, w) in enumerate(itertools.product([1, 3, 5], [2, 4]))
            for lvl in (False, True) for seed in (0, 1, 2)]
    rep = build_report(ReportInput(spec=s, execution="tiny-20261130-000000-abcd", rows=rows))
    md = rep.markdown
    assert "against depth: one curve per value of residual x width" in md
    depth_rows = [ln for ln in md.splitlines() if ln.startswith("| residual=")
                  and ", width=" in ln]
    assert len(depth_rows) == 2 * 2 * 3  # residual x width series, 3 depths each
    assert all(ln.endswith("| 3 |") and "[" in ln for ln in depth_rows)  # CI and n = 3
    assert rep.images["curves.png"][:4] == b"\x89PNG"


# -- several objectives: the spec --


def test_metric_list_gives_objectives_with_their_modes():
    s = parse_spec(tiny_spec(metric=["val_accuracy", {"name": "macs", "mode": "min"},
                                     {"name": "val_loss"}]))
    assert s.objectives == (("val_accuracy", "max"), ("macs", "min"), ("val_loss", "min"))
    assert s.multi_objective and (s.metric, s.mode) == ("val_accuracy", "max")
    assert not parse_spec(tiny_spec()).multi_objective
    assert parse_spec(tiny_spec()).objectives == (("val_accuracy", "max"),)


@pytest.mark.parametrize("metric, search, field, words", [
    (["val_accuracy", "val_accuracy"], {}, "metric", "distinct"),
    (["val_accuracy", "flops"], {}, "metric[1].name", "model_params"),
    (["val_accuracy", {"name": "macs", "mode": "smallest"}], {}, "metric[1].mode", "'min'"),
    ([], {}, "metric", "1 to 4"),
    (["val_accuracy", "val_loss", "train_loss", "macs", "model_params"], {}, "metric",
     "1 to 4"),
    (["val_accuracy", "model_params"], {"scheduler": "asha"}, "search.scheduler", "fifo"),
    ([["val_accuracy"]], {}, "metric[0]", "mapping"),
])
def test_bad_objectives_are_refused(metric, search, field, words):
    with pytest.raises(SpecError) as e:
        parse_spec(tiny_spec(metric=metric, search={"sampler": "tpe", "trials": 2, **search}))
    assert f"field `{field}`" in str(e.value) and words in str(e.value)


# -- several objectives: searcher, result, report --


def cost(run):
    return 100.0 * run["depth"] + (10.0 if run["bias"] else 0.0)


def test_a_multi_objective_search_tells_the_mean_of_every_objective(tmp_path):
    s = parse_spec(tiny_spec(metric=["val_accuracy", "model_params"], repeats=2,
                             search={"sampler": "tpe", "trials": 5, "seed": 1,
                                     "startup_trials": 2, "pending": 2}))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    searcher = BlockSearcher(s, storage=storage, study_name="mo")
    n = 0
    while (cfg := searcher.suggest(f"t{n}")) != "FINISHED":
        block = cfg["block"]
        searcher.on_trial_complete(f"t{n}", {"runs": {r["run_key"]: {
            "val_accuracy": fake_metric(r), "model_params": cost(r), "status": "completed"}
            for r in block}})
        n += 1
    st = optuna.load_study(study_name="mo", storage=storage)
    assert [d.name for d in st.directions] == ["MAXIMIZE", "MINIMIZE"]
    for cfg, t in zip(searcher.configs, st.get_trials(), strict=True):
        acc = [fake_metric(r) for r in cfg.runs]
        params = [cost(r) for r in cfg.runs]
        assert t.values == pytest.approx([sum(acc) / len(acc), sum(params) / len(params)])
        assert cfg.means == t.values
    # resumed from the store and the ended runs' objectives: the same told values
    again = BlockSearcher(s, storage=storage, study_name="mo")
    runs = [r for c in searcher.configs for r in c.runs]
    again.restore_progress({r["run_key"]: fake_metric(r) for r in runs},
                           objectives={r["run_key"]: (fake_metric(r), cost(r)) for r in runs})
    assert [c.means for c in again.configs] == [c.means for c in searcher.configs]
    assert again.suggest("x") == "FINISHED"


@pytest.mark.parametrize("seed", range(5))
def test_nondominated_is_the_set_no_point_beats(seed):
    rng = random.Random(seed)
    modes = ["max", "min", "max"][: rng.choice([2, 3])]
    pts = [tuple(rng.choice([0.0, 1.0, 2.0, 3.0]) for _ in modes) for _ in range(25)]
    front = nondominated(pts, modes)
    for i, p in enumerate(pts):
        beaten = any(dominates(q, p, modes) for q in pts)
        assert (i in front) == (not beaten)
    assert front  # a finite set always has an optimal point


def result_with(values, objectives):
    configs = [ConfigRecord(index=i, optuna_trial=i, params={"depth": i}, value=v[0], runs=2,
                            usable_runs=2, objective_values=v) for i, v in enumerate(values)]
    return StudyResult(name="t", execution="t-1", status="finished", metric=objectives[0][0],
                       mode=objectives[0][1], runs=[], configs=configs, tracking_uri="",
                       experiment_id="", parent_run_id="", optuna_storage="", optuna_study="",
                       wall_seconds=0.0, objectives=objectives)


def test_study_result_pareto_and_best():
    objectives = [("val_accuracy", "max"), ("model_params", "min")]
    res = result_with([(0.9, 500.0), (0.95, 900.0), (0.85, 600.0), (0.9, 400.0),
                       (float("nan"), 10.0)], objectives)
    assert [c.index for c in res.pareto] == [1, 3]
    assert res.best.index == 1  # the best accuracy on the front
    single = result_with([(0.9,), (0.95,)], [("val_accuracy", "max")])
    single.configs[0].objective_values = single.configs[1].objective_values = ()
    assert single.best.index == 1 and [c.index for c in single.pareto] == [1]


def test_level_fronts_per_compared_level():
    rows = []
    for c, (acc, params) in enumerate([(0.9, 500), (0.95, 900), (0.85, 600)]):
        for lvl, extra in ((True, 16), (False, 0)):
            for seed in range(2):
                rows.append({"config": c, "level": lvl, "seed": seed, "status": "completed",
                             "val_accuracy": acc + 0.01 * seed - (0.1 if c == 1 and not lvl
                                                                  else 0.0),
                             "model_params": params + extra, "param.depth": c + 1})
    rows.append({"config": 2, "level": True, "seed": 2, "status": "failed"})
    fronts = level_fronts(rows, [("val_accuracy", "max"), ("model_params", "min")], "bias",
                          ["depth"])
    assert set(fronts) == {"bias=true", "bias=false"}
    on = {k: [p.config for p in pts if p.optimal] for k, pts in fronts.items()}
    assert on == {"bias=true": [0, 1], "bias=false": [0]}
    p0 = fronts["bias=true"][0]
    assert p0.values == pytest.approx((0.905, 516.0)) and p0.n == 2
    assert p0.params == {"depth": 1}
    assert fronts["bias=true"][2].n == 2  # the failed run is not counted


# -- Fashion-MNIST --


def test_without_the_fashion_package_the_study_fails_saying_how_to_get_it(monkeypatch,
                                                                            tmp_path):
    monkeypatch.setattr(spec_dataset, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(SpecError) as e:
        load_spec(SPECS / "conv_bias_bn_fashion.yaml")
    text = str(e.value)
    assert "conv_bias_bn_fashion.yaml" in text and "field `dataset.path`" in text
    assert "apt-get install dataset-fashion-mnist" in text


def test_the_fashion_study_is_a_grid_over_norm_and_depth():
    if not spec_dataset.Path(spec_dataset.FASHION_MNIST_DIR).is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed "
                    "(apt-get install dataset-fashion-mnist)")
    s = load_spec(SPECS / "conv_bias_bn_fashion.yaml")
    assert s.sampler == "grid" and s.trials == 6 and s.dataset.limit == 6000
    assert s.compare_knob == "bias" and s.verdict_by == ("norm",)



def drive_two(s, slots, order, url):
    """Play Tune for a two-objective spec: `slots` blocks in flight, a random one ends."""
    storage = optuna.storages.RDBStorage(url)
    searcher, rng, running, n = BlockSearcher(s, storage=storage, study_name="mo"), \
        random.Random(order), {}, 0
    while True:
        while len(running) < slots and isinstance(cfg := searcher.suggest(f"t{n}"), dict):
            running[f"t{n}"], n = cfg["block"], n + 1
        if not running:
            return searcher, optuna.load_study(study_name="mo", storage=storage)
        tid = rng.choice(sorted(running))
        searcher.on_trial_complete(tid, {"runs": {r["run_key"]: {
            "val_accuracy": fake_metric(r), "model_params": cost(r), "status": "completed"}
            for r in running.pop(tid)}})


def test_nsga2_proposes_the_same_configurations_whatever_the_timing(tmp_path):
    s = parse_spec(tiny_spec(metric=["val_accuracy", "model_params"], repeats=1,
                             search={"sampler": "nsga2", "trials": 8, "seed": 2,
                                     "startup_trials": 3, "pending": 2}))
    seen = []
    for slots, order in ((1, 0), (4, 3)):
        searcher, st = drive_two(s, slots, order, f"sqlite:///{tmp_path}/{slots}.db")
        seen.append(([c.params for c in searcher.configs], [t.values for t in st.trials]))
    assert seen[0] == seen[1] and len(seen[0][0]) == 8
    assert all(v is not None and len(v) == 2 for v in seen[0][1])
