"""A tiny smoke version of the benchmark (the full one is benchmarks/bench.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna

from study.searcher import BlockSearcher
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
