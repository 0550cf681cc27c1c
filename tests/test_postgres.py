"""Optuna's storage on a real PostgreSQL server with a password: a study, a SIGKILL of its
driver, a resume and a report, and the password nowhere the study wrote or printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests import postgres
from tests.conftest import tiny_spec
from tests.secret_scan import find_secrets

pytestmark = pytest.mark.skipif(postgres.bin_dir() is None,
                                reason="PostgreSQL is not installed (Debian: postgresql)")


@pytest.fixture(scope="module")
def pg():
    with postgres.server() as server:
        yield server


def _study(args: list[str], env: dict[str, str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "study.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def _wait_for_completed_children(uri: str, name: str, at_least: int, results: Path,
                                 proc: subprocess.Popen, timeout: float = 240) -> None:
    client = MlflowClient(uri)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        # the results folder appears once the driver has made its stores: a reader before
        # then would race it through MLflow's schema migrations
        exp = client.get_experiment_by_name(name) if results.exists() else None
        if exp is not None and len(client.search_runs(
                [exp.experiment_id], "tags.`study.status` = 'completed'")) >= at_least:
            return
        time.sleep(0.5)
    raise AssertionError("the study made no progress")


@pytest.mark.slow
def test_study_on_postgres_survives_sigkill_and_keeps_the_password_secret(pg, workdir):
    name = "pgstudy"
    raw = tiny_spec(name=name, repeats=2, search={"sampler": "tpe", "trials": 3, "seed": 2,
                                                  "startup_trials": 2, "pending": 1},
                    train={"epochs": 8, "batch_size": 32})
    spec_path = workdir / "pg.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{workdir}/mlflow.db"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rpg", dir="/tmp"))  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(STUDY_OPTUNA_STORAGE=pg.url, MLFLOW_TRACKING_URI=uri, RAY_TMPDIR=str(ray_tmp),
               STUDY_RESULTS_DIR=str(workdir / "results"))
    outputs: list[str] = []

    driver = _study(["run", str(spec_path)], env, workdir)
    try:
        _wait_for_completed_children(uri, name, 3, workdir / "results", driver)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray instance, at once
        outputs += driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == -9

    resumed = _study(["resume", str(spec_path)], env, workdir)
    out, err = resumed.communicate(timeout=400)
    outputs += [out, err]
    assert resumed.returncode == 0, err[-3000:]

    report = _study(["report", name, "--out", str(workdir / "rebuilt")], env, workdir)
    out, err = report.communicate(timeout=300)
    outputs += [out, err]
    assert report.returncode == 0, err[-3000:]
    assert (workdir / "rebuilt" / "report.md").is_file()

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = [c.data.tags["study.run_key"] for c in children]
    assert len(keys) == 3 * 2 * 2 and len(set(keys)) == len(keys)  # none lost, none twice
    execution = parents[0].data.tags["study.execution"]
    trials = optuna.load_study(study_name=execution, storage=pg.url).get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)

    for r in runs:
        assert pg.password not in repr(r.data.params) + repr(r.data.tags)
    leaks = find_secrets([pg.password], folders=[workdir, ray_tmp],
                         texts={f"output {i}": o for i, o in enumerate(outputs)})
    assert not leaks, leaks
    # the redacted form says where the data is, without the password
    assert f"{pg.user}:***@{pg.host}:{pg.port}/{pg.database}" in parents[0].data.tags.get(
        "optuna.storage", "")
