"""New SQLite stores made from cached empty ones.

MLflow builds a new SQLite tracking store by replaying its schema migrations, and Optuna
builds a new storage with its own, each time: seconds of CPU while Ray starts beside them
on the same cores. An empty store of a given library version is the same file
every time, up to what is set below, so study keeps one per version in its cache folder and
copies it. Anything other than a new sqlite:/// file, or a cache that cannot be used, is
left to the library, which then makes the store as usual.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from study.redact import redact_text, redact_uri
from study.tracking.mlflow_adapter import default_artifact_location

logger = logging.getLogger(__name__)

__all__ = ["cache_dir", "seed_mlflow_store", "seed_optuna_storage"]


def cache_dir() -> Path:
    """Where study keeps what it can rebuild: $STUDY_CACHE_DIR, else $XDG_CACHE_HOME/study,
    else ~/.cache/study."""
    if os.environ.get("STUDY_CACHE_DIR"):
        return Path(os.environ["STUDY_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "study"


def seed_mlflow_store(uri: str) -> bool:
    """Make a new SQLite MLflow tracking store from the cached empty one; True if made."""
    def make(url: str) -> None:
        from mlflow.tracking import MlflowClient

        MlflowClient(url).search_experiments(max_results=1)

    def adapt(tmp: Path) -> None:
        # The Default experiment (0) holds the artifact location and time of the template's
        # making: set them as MLflow would for this store, here and now.
        location = default_artifact_location(uri, tmp)
        now = int(time.time() * 1000)
        with contextlib.closing(sqlite3.connect(tmp)) as db, db:
            db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, "
                       "last_update_time = ? WHERE experiment_id = 0", (location, now, now))

    return _seed(uri, "mlflow", make, adapt)


def seed_optuna_storage(url: str) -> bool:
    """Make a new SQLite Optuna storage from the cached empty one; True if made."""
    def make(u: str) -> None:
        import optuna

        optuna.storages.RDBStorage(u).engine.dispose()

    return _seed(url, "optuna", make)


def _seed(uri: str, library: str, make: Callable[[str], None],
          adapt: Callable[[Path], None] | None = None) -> bool:
    if not uri.startswith("sqlite:///") or "?" in uri:
        return False
    path = Path(uri[len("sqlite:///"):])
    if not path.name or path.exists() or not path.parent.is_dir():
        return False
    unique = f"{os.getpid()}.{threading.get_ident()}"
    try:
        version = importlib.import_module(library).__version__
        template = cache_dir() / f"{library}-{version}-empty.db"
        if not template.exists():
            template.parent.mkdir(parents=True, exist_ok=True)
            fresh = template.with_name(f".{template.name}.{unique}")
            try:
                make(f"sqlite:///{fresh}")
                os.replace(fresh, template)
            finally:
                fresh.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{unique}")
        try:
            shutil.copyfile(template, tmp)
            if adapt is not None:
                adapt(tmp)
            with contextlib.suppress(FileExistsError):  # another process made it first
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except Exception as e:  # an optimisation only: reported, and the library makes the store
        logger.warning("the new %s store %s was not copied from the cached empty one (%s: %s); "
                       "%s makes it itself, a slower start", library, redact_uri(uri),
                       type(e).__name__, redact_text(str(e)), library)
        return False
    return True
