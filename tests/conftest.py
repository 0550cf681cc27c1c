from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from study.testing import faults

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "search_spaces"


def session_processes(sid: int) -> dict[int, str]:
    """pid -> command line of every process in process session `sid`."""
    out = subprocess.run(["ps", "-ww", "-eo", "sid=,pid=,args="], capture_output=True,
                         text=True).stdout
    rows = (ln.split(None, 2) for ln in out.splitlines())
    return {int(r[1]): r[2] if len(r) > 2 else "" for r in rows if int(r[0]) == sid}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder: SQLite stores and results land there, env defaults cleared."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "STUDY_OPTUNA_STORAGE", "STUDY_RESULTS_DIR",
                "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


# Runs of the session's Ray instance that fail on purpose: "study/run_key" fails at every
# attempt, "@N" kills its worker after epoch N of the first attempt (test_e2e uses both).
INJECTED_FAULTS = {"crash": "crashy/c000-bias_init=0.0-s0", "retry": "retry/c000-s0@2"}


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the session's end-to-end tests (2 CPUs)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    # The workers inherit the faults planned for test_e2e (study.testing.faults) from the
    # environment Ray starts with; this process and its other children never see them.
    os.environ[faults.ENV] = ",".join(INJECTED_FAULTS.values())
    try:
        # "local": a new instance of its own, never the cluster `ray start` last made here
        context = ray.init(address="local", num_cpus=2, include_dashboard=False,
                           log_to_driver=False)
    finally:
        del os.environ[faults.ENV]
    yield context  # context.address_info["session_dir"]: its logs, for the secret scans
    ray.shutdown()


def tiny_spec(**over) -> dict:
    """A raw spec of a few seconds: synthetic 8x8 data, 2 epochs."""
    raw = {
        "name": "tiny",
        "question": "Does the conv bias matter on a tiny synthetic problem?",
        "dataset": {"name": "synthetic", "samples": 200},
        "model": {"name": "cnn", "width": 4, "norm": "batch"},
        "compare": {"bias": [True, False]},
        "repeats": 1,
        "space": {"depth": {"int": [1, 3]}, "lr": {"log": [0.01, 0.1]}},
        "search": {"sampler": "tpe", "trials": 2, "seed": 3},
        "train": {"epochs": 2, "batch_size": 32},
    }
    raw.update(over)
    return raw


@pytest.fixture(scope="session")
def answered_study(ray_local, tmp_path_factory):
    """One tiny real study, its stores in a folder of its own, shared by the tests of what
    users see of it (MLflow UI, Optuna's dashboard, progress events): (result, folder,
    the Progress events its on_progress received)."""
    import yaml

    import study

    root = tmp_path_factory.mktemp("answered")
    raw = tiny_spec(name="answered", repeats=2,
                    space={"depth": {"int": [1, 3]}, "norm": {"choice": ["batch", "none"]}},
                    model={"name": "cnn", "width": 4},
                    verdict={"metric": "test_accuracy", "equivalence_margin": 0.05,
                             "by": "norm"},
                    storage={"tracking": f"sqlite:///{root}/mlflow.db",
                             "optuna": f"sqlite:///{root}/optuna.db",
                             "results": str(root / "results")})
    path = root / "answered.yaml"
    path.write_text(yaml.safe_dump(raw))
    events: list = []
    here = os.getcwd()
    os.chdir(root)  # MLflow's artifacts (./mlruns) go there too
    try:
        result = study.run(path, echo=None, on_progress=events.append)
    finally:
        os.chdir(here)
    return result, root, events
