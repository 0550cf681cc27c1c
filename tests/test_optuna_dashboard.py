"""Optuna's dashboard on a study's own storage: a real `optuna-dashboard` process over the
SQLite storage of a tiny real study, asked through its JSON API (what its pages show)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_command() -> list[str]:
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) \
        or shutil.which("optuna-dashboard")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("optuna-dashboard is missing: it is in the `test` extra")
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard)")
    return [exe]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def start_dashboard(storage: str, root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([*dashboard_command(), storage, "--host", "127.0.0.1",
                             "--port", str(port)], cwd=root,
                            stdout=open(root / "dashboard.log", "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        try:
            get_json(base + "/api/meta")
            return proc, base
        except (urllib.error.URLError, OSError):
            assert proc.poll() is None, (root / "dashboard.log").read_text()[-2000:]
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("optuna-dashboard did not start")


def attrs(trial: dict) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


def test_dashboard_shows_configurations_values_and_run_attributes(answered_study):
    result, root, _ = answered_study
    proc, base = start_dashboard(result.optuna_storage, root)
    try:
        studies = get_json(base + "/api/studies")["study_summaries"]
        mine = [s for s in studies if s["study_name"] == result.optuna_study]
        assert len(mine) == 1
        study_attrs = {a["key"]: a["value"] for a in mine[0]["user_attrs"]}
        assert study_attrs["mlflow_parent_run_id"] == result.parent_run_id
        detail = get_json(f"{base}/api/studies/{mine[0]['study_id']}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    trials = {t["number"]: t for t in detail["trials"]}
    assert len(trials) == len(result.configs) == 2
    for cfg in result.configs:
        t = trials[cfg.optuna_trial]
        assert t["state"] == "Complete"
        assert math.isclose(float(t["values"][0]), cfg.value)  # the told mean
        shown = {p["name"]: p["param_external_value"] for p in t["params"]}
        assert shown == {k: str(v) for k, v in cfg.params.items()}
        a = attrs(t)
        runs = [r for r in result.runs if r.config == cfg.index]
        assert a["config"] == str(cfg.index)
        assert a["runs_planned"] == a["runs_ended"] == a["runs_with_value"] == str(len(runs))
        assert a["runs_without_value"] == a["runs_pruned"] == "0"
        assert json.loads(a["seeds"]) == sorted({r.seed for r in runs})
        assert len(json.loads(a["seeds"])) == 2
        assert a["compared"] == "bias" and json.loads(a["levels"]) == [True, False]
        assert a["mlflow_parent_run_id"] == result.parent_run_id
        assert a["mlflow_experiment_id"] == result.experiment_id
        assert a["execution"] == result.execution
        values = json.loads(a["run_values"])
        assert values == {r.run_key: r.metrics[result.metric] for r in runs}
