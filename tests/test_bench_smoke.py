"""A tiny smoke version of the benchmark (the full one is benchmarks/bench.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from study.search.searcher import BlockSearcher
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from common import SPEC, bench_runs  # noqa: E402

from study.spec import load_spec  # noqa: E402


def test_benchmark_runs_are_the_ones_study_proposes(tmp_path):
    runs = bench_runs()
    spec = load_spec(SPEC)
    assert len(runs) == spec.total_runs == 24
    searcher = BlockSearcher(spec, storage=optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path}/o.db"), study_name="b")
    proposed = []
    for i in range(12):  # one trial per pair (both arms of a seed)
        block = searcher.suggest(f"t{i}")["block"]
        proposed += block
        searcher.on_trial_complete(f"t{i}", {"runs": {r["run_key"]: {
            "val_accuracy": 0.5, "status": "completed"} for r in block}})
    assert searcher.suggest("t12") == "FINISHED"
    strip = [{k: v for k, v in r.items() if k != "optuna_trial"} for r in proposed]
    assert strip == runs


def test_loop_script_trains_and_reports(tmp_path):
    out = tmp_path / "loop.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loop.py"), "--shard", "0/24",
                    "--out", str(out)], check=True, timeout=120)
    (row,) = json.loads(out.read_text())
    assert row["run_key"] == "c000-bias=True-s0" and row["train_seconds"] > 0


def test_ratios_pair_each_row_with_the_loop_of_its_own_repetition():
    import bench

    loop, study = bench.KEYS["loop"], bench.KEYS["study"]

    def row(approach, slots, rep, wall, train_per_run, **extra):
        return {"approach": approach, "slots": slots, "rep": rep, "wall_s": wall,
                "mean_run_train_s": train_per_run, **extra}

    rows = [row(loop, 1, 0, 40.0, 1.6), row(study, 1, 0, 46.0, 1.68),
            row(loop, 1, 1, 50.0, 2.0), row(study, 1, 1, 55.0, 2.0),
            row(loop, 2, 0, 20.0, 1.6), row(study, 2, 0, 30.0, 1.76),
            row(study, 2, 1, 31.0, 1.7),  # no loop in repetition 1 at 2 slots
            row(bench.KEYS["tune"], 1, 0, 170.0, 1.9, kept=1, wall_vs_loop=3.9)]
    bench.paired_ratios(rows)
    assert [r.get("wall_vs_loop") for r in rows] == pytest.approx(
        [1.0, 1.15, 1.0, 1.1, 1.0, 1.5, None, 3.9])  # a kept row keeps its own run's ratio
    assert [r.get("train_vs_loop") for r in rows] == pytest.approx(
        [1.0, 1.05, 1.0, 1.0, 1.0, 1.1, None, None])
    lines = bench.table([dict(r, train_s=0.0, efficiency=0.0, overhead_per_run_s=0.0,
                              peak_rss_mib=0.0) for r in rows], 2)
    (study1,) = [ln for ln in lines if ln.startswith(f"| {study} | 1 |")]
    assert "| 1.125 (1.100-1.150) |" in study1  # wall x loop: median (min-max) of 1.15, 1.1
    (study2,) = [ln for ln in lines if ln.startswith(f"| {study} | 2 |")]
    assert "| 1.500 (1.500-1.500) |" in study2  # only the paired repetition counts
