"""Every use of MLflow's private API in study, in one place (tests: test_mlflow_adapter.py).

One use: the artifact location MLflow gives the Default experiment of a new SQLite store,
asked of MLflow's own store builder directly, so that MLflow's cache of open stores keeps
out of a store file that is still being made (see ``stores.seed_mlflow_store``). If MLflow
moves these names, the test fails loudly; at run time the store is then made by MLflow
itself, with a WARNING (a slower start, nothing else).
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["default_artifact_location"]

REGISTRY = ("mlflow.tracking._tracking_service.utils", "_tracking_store_registry")


def default_artifact_location(uri: str, db: Path) -> str:
    """Where MLflow puts experiment 0's artifacts for the store `uri`, asked of a store on
    the file `db` (its engine closed again before returning)."""
    module, name = REGISTRY
    registry = getattr(importlib.import_module(module), name)
    store = registry.get_store_builder(uri)(store_uri=f"sqlite:///{db}", artifact_uri=None)
    try:
        return str(store._get_artifact_location(0))
    finally:
        store.engine.dispose()
