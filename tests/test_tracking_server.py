"""A real `mlflow server` process as the tracking store, stopped and restarted mid-study:
writes are queued and retried, nothing is lost."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

import study
from tests.conftest import tiny_spec
from tests.test_cluster import free_port

pytestmark = pytest.mark.slow


class Server:
    def __init__(self, root: Path, auth_password: str | None = None) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.auth_password = auth_password

    def start(self) -> None:
        auth, env = [], dict(os.environ)
        if self.auth_password:  # MLflow's basic-auth app, admin user with this password
            auth = ["--app-name", "basic-auth"]
            env |= {"MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret",
                    "MLFLOW_AUTH_ADMIN_PASSWORD": self.auth_password}
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1", *auth,
             "--backend-store-uri", f"sqlite:///{self.root}/server.db",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=open(self.root / "server.log", "a"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True, cwd=self.root, env=env)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 90:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return
            except OSError:
                assert self.proc.poll() is None, (self.root / "server.log").read_text()[-2000:]
                time.sleep(0.3)
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def test_server_down_mid_study_loses_nothing(ray_local, workdir, caplog):
    server = Server(workdir)
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
        with caplog.at_level(logging.WARNING, logger="study.tracking"):
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
    server = Server(workdir, auth_password=password)
    server.start()
    try:
        raw = tiny_spec(name="authed", storage={"tracking": server.uri},
                        search={"sampler": "random", "trials": 1, "seed": 0})
        path = workdir / "authed.yaml"
        path.write_text(yaml.safe_dump(raw))
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        from study.tracking import TrackingError

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
