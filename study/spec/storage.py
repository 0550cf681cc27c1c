"""`storage:`: where Optuna and MLflow keep the study, and the explicit step that fills
unset stores from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.spec.context import Context


@dataclass(frozen=True)
class _Storage:
    """`storage:`; the fields are StudySpec's of the same names."""

    optuna_storage: str
    tracking_uri: str
    results_dir: str


# Where each store is when `storage:` does not say: key -> (environment variable, default)
STORAGE_ENV: dict[str, tuple[str, str]] = {
    "optuna": ("STUDY_OPTUNA_STORAGE", "sqlite:///optuna.db"),  # any SQLAlchemy URL
    "tracking": ("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),  # MLflow's own variable
    "results": ("STUDY_RESULTS_DIR", "study_results"),  # Ray Tune's folder
}


def resolve_storage(section: Mapping[str, Any],
                    environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Where each store is: for each key of STORAGE_ENV, the spec's `storage.<key>`, else
    its environment variable in `environ` (default: os.environ), else its default; an
    empty value counts as unset. The values are not checked here (see parse_storage)."""
    env = os.environ if environ is None else environ
    return {key: section.get(key) or env.get(var) or default
            for key, (var, default) in STORAGE_ENV.items()}


def parse_storage(c: Context, st: Mapping[str, Any], where: Mapping[str, Any]) -> _Storage:
    """`storage:` checked: `st` the spec's section, `where` resolved by resolve_storage
    (what comes from the environment is checked too, except MLflow's URI); relative
    SQLite paths made absolute."""
    optuna_storage = c.string("storage.optuna", where["optuna"])
    if "://" not in optuna_storage:
        c.fail("storage.optuna", optuna_storage, "an SQLAlchemy URL such as "
               "sqlite:///optuna.db or postgresql://user:pw@host/db")
    if st.get("tracking"):
        c.string("storage.tracking", st["tracking"])
    tracking_uri = _absolute_sqlite(where["tracking"])
    optuna_storage = _absolute_sqlite(optuna_storage)
    results_dir = c.string("storage.results", where["results"])
    return _Storage(optuna_storage, tracking_uri, results_dir)


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The MLflow store: `explicit`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db;
    a relative SQLite path made absolute."""
    return _absolute_sqlite(resolve_storage({"tracking": explicit})["tracking"])


def _absolute_sqlite(url: str) -> str:
    """sqlite:///rel.db -> sqlite:////abs/cwd/rel.db: one file, whatever the process' cwd
    later (Ray workers, `ray job submit`, in-process caches keyed by URL)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and \
            url != prefix + ":memory:":
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


