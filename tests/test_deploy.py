"""Deployment files, checked statically (no Docker engine or Kubernetes here)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from study.spec import load_spec
from tests.conftest import ROOT

DOCKER = ROOT / "docker"
CLUSTER = ROOT / "cluster"
VENV_BIN = Path(sys.executable).parent


def cmd(service: dict) -> str:
    c = service["command"]
    return " ".join(c) if isinstance(c, list) else c


def compose_config() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: .ci/run installs Debian's docker-compose")
        pytest.skip("docker-compose (Debian package) not installed")
    r = subprocess.run([exe, "-f", str(DOCKER / "docker-compose.yml"), "config"],
                       capture_output=True, text=True, env={**os.environ,
                                                            "POSTGRES_PASSWORD": "x"})
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_compose_file_is_valid_and_complete():
    cfg = compose_config()
    services = cfg["services"]
    assert set(services) == {"postgres", "mlflow", "ray-head", "ray-worker"}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond localhost"
    head, worker = services["ray-head"], services["ray-worker"]
    assert "--head" in cmd(head) and "--address=ray-head:6379" in cmd(worker)
    for svc in (head, worker):
        env = svc["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["STUDY_OPTUNA_STORAGE"].startswith("postgresql://")
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"]
    mlflow = cmd(services["mlflow"])
    assert "postgresql://" in mlflow and "--artifacts-destination /mlartifacts" in mlflow
    assert any("mlartifacts" in str(v) for v in services["mlflow"]["volumes"])
    assert (DOCKER / "initdb" / "01-optuna.sql").read_text().count("CREATE DATABASE optuna")


def dockerfile_cmd(path: Path) -> list[str]:
    for line in path.read_text().splitlines():
        if line.startswith("CMD "):
            return json.loads(line[4:])
    raise AssertionError(f"{path} has no CMD")


def test_images_commands_exist_and_sources_are_copied():
    for exe in ("ray", "study", "mlflow"):  # what the images run, installed by this package
        assert (VENV_BIN / exe).exists(), exe
    assert dockerfile_cmd(DOCKER / "Dockerfile")[0] == "ray"
    assert dockerfile_cmd(DOCKER / "Dockerfile.mlflow")[0] == "mlflow"
    text = (DOCKER / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in shlex.split(line)[1:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} missing"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "postgres" in extras and 'pip install ".[postgres]"' in text
    assert "torch==2.13.0" in text  # torch first, pinned, from the matching index


def test_cluster_launcher_config():
    cfg = yaml.safe_load((CLUSTER / "ray-cluster-aws.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    assert cfg["docker"]["image"]
    env = " ".join(cfg["docker"]["run_options"])
    for var in ("MLFLOW_TRACKING_URI", "STUDY_OPTUNA_STORAGE", "STUDY_RESULTS_DIR"):
        assert var in env


def test_kuberay_rayjob_runs_a_bundled_study():
    import ray

    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["study", "run"]
    overrides = {a.split("=", 1)[0]: a.split("=", 1)[1]
                 for a in argv[3:] if "=" in a and not a.startswith("--")}
    spec = load_spec(ROOT / argv[2], overrides=overrides)
    assert spec.gpu > 0
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    gpu = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
