"""End to end on real parts (local Ray, Optuna and MLflow on SQLite, real training): a grid
sweep, a multi-objective search, and the bundled Fashion-MNIST study on a sliver of data."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
import yaml

import study
from study.records import dominates
from study.report.build import rebuild
from study.spec import FASHION_MNIST_DIR
from tests.conftest import SPECS, tiny_spec


def write_spec(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_grid_study_runs_every_point_once_paired_and_curves_show_each(ray_local, workdir):
    raw = tiny_spec(space={"depth": {"int": [1, 3], "step": 2},
                           "width": {"choice": [2, 4]}},
                    model={"name": "cnn", "norm": "batch"}, repeats=2,
                    search={"sampler": "grid", "seed": 1}, train={"epochs": 1},
                    execution={"runs_per_trial": 4})
    res = study.run(write_spec(workdir / "grid.yaml", raw), echo=None)
    assert res.status == "finished" and res.counts()["completed"] == 4 * 2 * 2
    points = sorted((c.params["depth"], c.params["width"]) for c in res.configs)
    assert points == sorted(itertools.product([1, 3], [2, 4]))  # each point once
    for c in res.configs:  # every point paired (both bias levels) and repeated (2 seeds)
        runs = [(r.level, r.seed) for r in res.runs if r.config == c.index]
        assert sorted(runs) == sorted(itertools.product([False, True], [1, 2]))
    ost = optuna.load_study(study_name=res.optuna_study, storage=res.optuna_storage)
    assert len(ost.trials) == 4
    md = (Path(res.report_dir) / "report.md").read_text()
    assert (Path(res.report_dir) / "curves.png").stat().st_size > 0
    # a curve per width against depth and per depth against width; at every point
    # n = 2 seeds x 2 bias levels
    assert "against depth: one curve per value of width" in md
    assert "against width: one curve per value of depth" in md
    table = [ln for ln in md.splitlines() if ln.startswith(("| width=", "| depth="))]
    assert len(table) == 8 and all(ln.endswith("| 4 |") for ln in table)
    assert "95% CI" in md and "n is the runs at each point" in md


def test_a_multi_objective_study_finds_and_draws_the_pareto_front(ray_local, workdir):
    raw = tiny_spec(metric=["val_accuracy", "model_params"],
                    search={"sampler": "tpe", "trials": 3, "seed": 4})
    res = study.run(write_spec(workdir / "mo.yaml", raw), echo=None)
    assert res.status == "finished" and res.counts()["completed"] == 6
    ost = optuna.load_study(study_name=res.optuna_study, storage=res.optuna_storage)
    assert [d.name for d in ost.directions] == ["MAXIMIZE", "MINIMIZE"]
    for c in res.configs:  # told: the mean of each objective over the configuration's runs
        runs = [r for r in res.runs if r.config == c.index]
        acc = sum(r.metrics["val_accuracy"] for r in runs) / len(runs)
        params = sum(r.model_params for r in runs) / len(runs)
        assert c.objective_values == pytest.approx((acc, params))
        assert ost.trials[c.optuna_trial].values == pytest.approx([acc, params])
    front = res.pareto
    assert front and res.best in front
    modes = ["max", "min"]
    for c in res.configs:  # on the front exactly when nothing beats it
        beaten = any(dominates(o.objective_values, c.objective_values, modes)
                     for o in res.configs)
        assert (c in front) == (not beaten)
    report = Path(res.report_dir)
    assert (report / "pareto.png").stat().st_size > 0
    md = (report / "report.md").read_text()
    assert "## Trade-offs (Pareto front)" in md and "| bias=true |" in md
    assert "| bias=false |" in md
    # rebuilt from the stores alone: the same fronts (model_params read back from MLflow)
    rebuilt, _, _ = rebuild(res.execution, tracking_uri=res.tracking_uri,
                            optuna_storage=res.optuna_storage, out_dir=workdir / "again",
                            log_to_mlflow=False)
    section = md[md.index("## Trade-offs"):md.index("## Parameter importance")]
    assert section in rebuilt.markdown


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed "
                    "(apt-get install dataset-fashion-mnist)")
def test_the_fashion_study_trains_on_28x28_images(ray_local, workdir):
    res = study.run(SPECS / "conv_bias_bn_fashion.yaml", echo=None, overrides={
        "dataset.limit": 300, "dataset.val_fraction": 0.01, "train.epochs": 1,
        "search.trials": 1, "repeats": 1})
    assert res.status == "finished" and res.counts()["completed"] == 2
    assert res.runs[0].params["depth"] in (2, 3, 4)
    # 28x28 input: the first conv sees 28x28 (macs per example far above an 8x8 net's)
    assert all(r.macs and r.macs > 28 * 28 * 16 * 9 for r in res.runs)
    assert all(0.0 <= r.metrics["test_accuracy"] <= 1.0 for r in res.runs)
    assert res.effects[0].group == "all" and res.effects[0].n == 1  # a verdict on one pair
