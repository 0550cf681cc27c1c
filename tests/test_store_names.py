"""Names read back from stores or given on the command line never become paths or filter
strings unchecked; an unreachable tracking server fails in seconds. Real MLflow (SQLite
store) through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study import cli
from study.tracking.stores import seed_mlflow_store
from tests.conftest import ROOT, tiny_spec
from tests.test_cluster import free_port

HOSTILE = ["../../x", "a/b", "x'y", "' OR 1=1", "x\ny", "a" * 300, "", "a\0b",
           "tiny-20261130-104748-64f6/../../x"]


@pytest.fixture
def deep(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder three levels below the test's own, so a path that climbs out of
    the results folder still lands where the test can see it."""
    folder = workdir / "a" / "b" / "work"
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    return folder


def store_with_parent(folder: Path, execution: str) -> str:
    """An MLflow store holding study 'tiny' whose parent run's execution tag is `execution`
    (as a damaged or hostile store could have it)."""
    uri = f"sqlite:///{folder}/mlflow.db"
    seed_mlflow_store(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("tiny")
    run = client.create_run(exp, tags={
        "study.name": "tiny", "study.execution": execution, "study.status": "interrupted",
        "optuna.storage": f"sqlite:///{folder}/optuna.db"})
    client.log_text(run.info.run_id, yaml.safe_dump(tiny_spec()), "spec.yaml")
    return uri


def files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def one_error_line(err: str, value: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if value:
        assert repr(value[:120])[1:-1] in lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["report", "resume"])
@pytest.mark.parametrize("tag", HOSTILE, ids=range(len(HOSTILE)))
def test_execution_id_from_the_store_is_checked(command, tag, deep, workdir, capfd):
    uri = store_with_parent(deep, tag)
    before = files(workdir)
    capfd.readouterr()
    assert cli.main([command, "tiny", "--tracking-uri", uri]) == 2
    line = one_error_line(capfd.readouterr().err, tag)
    # the empty tag is no execution at all (MLflow's filter skips it); the others are named
    assert ("not a valid execution id" in line and "tag study.execution" in line) or \
        (tag == "" and "no study execution" in line)
    written = files(workdir) - before
    assert not [p for p in written if p.parent != deep], written  # at most the store's files
    assert not (workdir / "a" / "b" / "x").exists() and not (workdir / "a" / "x").exists()


@pytest.mark.parametrize("command", ["report", "resume"])
@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_name_on_the_command_line_is_checked(command, name, deep, workdir, capfd):
    uri = store_with_parent(deep, "tiny-20261130-104748-64f6")
    before = files(workdir)
    capfd.readouterr()
    assert cli.main([command, name, "--tracking-uri", uri]) == 2
    line = one_error_line(capfd.readouterr().err, name)
    assert "neither a study name nor an execution id" in line and "Allowed" in line
    assert files(workdir) == before


@pytest.mark.parametrize("command", ["report", "resume"])
def test_unreachable_tracking_server_fails_in_seconds(command, workdir):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "study.cli", command, "tiny",
                           "--tracking-uri", uri], capture_output=True, text=True,
                          timeout=120, env=env, cwd=workdir)
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_error_line(proc.stderr, "")
    assert uri in line and "unreachable" in line
    assert took < 20, took  # imports included; MLflow's own retries took minutes
