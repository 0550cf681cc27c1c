"""What study.tracking.mlflow_adapter takes from MLflow's private API is still there and
still means what the study uses it for; if MLflow moves it, these fail loudly."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.tracking import mlflow_adapter


def test_the_store_registry_is_where_the_adapter_looks() -> None:
    module, name = mlflow_adapter.REGISTRY
    registry = getattr(importlib.import_module(module), name)
    assert callable(registry.get_store_builder("sqlite:///x.db"))


def test_the_default_artifact_location_is_the_one_mlflow_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'made.db'}"
    made = MlflowClient(uri).get_experiment("0").artifact_location  # MLflow's own store
    asked = mlflow_adapter.default_artifact_location(uri, tmp_path / "other.db")
    assert asked == made == str(tmp_path / "mlruns" / "0")
