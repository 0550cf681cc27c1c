"""A real `mlflow server` process as the tracking store, started with the compose file's
MLflow command and environment, stopped and restarted mid-study: writes are queued and
retried, nothing is lost."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

import study
from tests.conftest import tiny_spec
from tests.test_deploy import MlflowServer

pytestmark = pytest.mark.slow


def tracking_server(root: Path, auth_password: str | None = None) -> MlflowServer:
    """The compose file's MLflow server on 127.0.0.1; with a password, MLflow's basic-auth
    app and an admin user with that password."""
    if not auth_password:
        return MlflowServer(root)
    return MlflowServer(root, extra=["--app-name", "basic-auth"], app_env={
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret",
        "MLFLOW_AUTH_ADMIN_PASSWORD": auth_password})


def test_server_down_mid_study_loses_nothing(ray_local, workdir, caplog):
    server = tracking_server(workdir)
    server.start()
    raw = tiny_spec(name="flaky", repeats=2, train={"epochs": 4, "batch_size": 16},
                    dataset={"name": "synthetic", "samples": 3000},
                    storage={"tracking": server.uri})
    path = workdir / "flaky.yaml"
    path.write_text(yaml.safe_dump(raw))
    events: list[str] = []
    restarted = threading.Event()

    def outage() -> None:
        while not any("runs done" in e for e in events):  # the study has started
            time.sleep(0.05)
        time.sleep(2)
        server.stop()  # down while runs keep reporting
        time.sleep(6)
        server.start()
        restarted.set()

    t = threading.Thread(target=outage, daemon=True)
    t.start()
    try:
        with caplog.at_level(logging.WARNING, logger="study.tracking.writer"):
            res = study.run(path, echo=events.append)
    finally:
        t.join(timeout=120)
    assert restarted.is_set()
    try:
        # writes failed during the outage, were kept and sent later
        assert any("kept queued, retrying" in r.getMessage() for r in caplog.records)
        assert res.status == "finished" and res.counts()["completed"] == 8
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("flaky")
        runs = client.search_runs([exp.experiment_id], max_results=100)
        kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(kids) == 8 and all(k.info.status == "FINISHED" for k in kids)
        for k in kids:
            steps = [m.step for m in client.get_metric_history(k.info.run_id, "val_accuracy")]
            assert sorted(steps) == [1, 2, 3, 4]
        parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
        assert parent.info.status == "FINISHED"
        assert "report/report.html" in {a.path for a in
                                        client.list_artifacts(parent.info.run_id, "report")}
    finally:
        server.stop()


def test_basic_auth_credentials_from_the_standard_environment(ray_local, workdir,
                                                               monkeypatch):
    password = "test-Only-Password-123"
    server = tracking_server(workdir, auth_password=password)
    server.start()
    try:
        raw = tiny_spec(name="authed", storage={"tracking": server.uri},
                        search={"sampler": "random", "trials": 1, "seed": 0})
        path = workdir / "authed.yaml"
        path.write_text(yaml.safe_dump(raw))
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        from study.tracking.writer import TrackingError

        with pytest.raises(TrackingError) as ei:  # before any run
            study.run(path, echo=None)
        assert "MLFLOW_TRACKING_USERNAME" in str(ei.value)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        res = study.run(path, echo=None)
        assert res.status == "finished" and res.counts()["completed"] == 2
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("authed")
        kids = [r for r in client.search_runs([exp.experiment_id])
                if "mlflow.parentRunId" in r.data.tags]
        assert len(kids) == 2
    finally:
        server.stop()
