"""A new SQLite tracking store is seeded from an empty one that MLflow made (cached), and is
then the same store MLflow would have made: schema, schema version, Default experiment."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.tracking.stores import seed_mlflow_store, seed_optuna_storage
from study.tracking.writer import check_tracking_uri


def _schema(c: sqlite3.Connection) -> list:
    # MLflow's own migrations order a table's constraints differently from one run to the
    # next (set order): compare each statement's lines as a set.
    return sorted((t, n, sorted(line.strip().rstrip(",") for line in (sql or "").split("\n")))
                  for t, n, sql in c.execute("SELECT type, name, sql FROM sqlite_master"))


def _contents(db: Path) -> tuple:
    with sqlite3.connect(db) as c:
        schema = _schema(c)
        version = c.execute("SELECT * FROM alembic_version").fetchall()
        default = c.execute("SELECT experiment_id, name, artifact_location, lifecycle_stage, "
                            "workspace, creation_time FROM experiments").fetchall()
    return schema, version, default


def test_seeded_store_is_the_store_mlflow_makes(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("STUDY_CACHE_DIR", str(cache))
    for d in ("first", "second", "plain"):
        (tmp_path / d).mkdir()

    uri = {d: f"sqlite:///{tmp_path / d / 'mlflow.db'}" for d in ("first", "second", "plain")}
    monkeypatch.chdir(tmp_path / "first")  # no template yet: MLflow makes one, then a copy
    check_tracking_uri(uri["first"])
    assert list(cache.glob("mlflow-*-empty.db")) and not list(cache.glob(".*"))

    monkeypatch.chdir(tmp_path / "plain")  # what MLflow makes on its own, for comparison
    MlflowClient(uri["plain"]).search_experiments()
    monkeypatch.chdir(tmp_path / "second")
    before = int(time.time() * 1000)
    assert seed_mlflow_store(uri["second"])
    assert not seed_mlflow_store(uri["second"])  # it exists now: left alone

    schema, version, default = _contents(tmp_path / "second" / "mlflow.db")
    p_schema, p_version, p_default = _contents(tmp_path / "plain" / "mlflow.db")
    assert schema == p_schema and version == p_version
    # The Default experiment is this store's, not the template's: its artifact location
    # follows this working directory, as MLflow's own would, and it was made just now.
    assert [r[:5] for r in default] == [
        (0, "Default", str(tmp_path / "second" / "mlruns" / "0"), "active", "default")]
    assert [r[:5] for r in p_default] == [
        (0, "Default", str(tmp_path / "plain" / "mlruns" / "0"), "active", "default")]
    assert default[0][5] >= before
    assert _contents(tmp_path / "first" / "mlflow.db")[2][0][2] == str(
        tmp_path / "first" / "mlruns" / "0")

    client = MlflowClient(uri["second"])  # and it works as a store
    exp = client.create_experiment("e")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 0.5, step=1)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 0.5}


def test_seeding_leaves_other_stores_to_mlflow(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    assert not seed_mlflow_store("sqlite://")  # in memory
    assert not seed_mlflow_store(f"sqlite:///{tmp_path}/missing/dir/mlflow.db")
    assert not seed_mlflow_store("sqlite:///mlflow.db?timeout=5")
    assert not seed_mlflow_store("http://127.0.0.1:5000")
    assert not (tmp_path / "cache").exists()

    # A cache that cannot be written: MLflow makes the store the usual way.
    (tmp_path / "blocked").write_text("a file, not a folder")
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "blocked"))
    with caplog.at_level(logging.WARNING, logger="study.tracking.stores"):
        assert not seed_mlflow_store(f"sqlite:///{tmp_path}/a.db")
    (said,) = [r.getMessage() for r in caplog.records if r.name == "study.tracking.stores"]
    assert "not copied from the cached empty one" in said and "a.db" in said  # reported
    assert not (tmp_path / "a.db").exists()
    check_tracking_uri(f"sqlite:///{tmp_path}/a.db")
    assert _contents(tmp_path / "a.db")[2][0][1] == "Default"


def test_writer_sends_each_run_in_one_batch(tmp_path: Path) -> None:
    from study.tracking.writer import MlflowWriter

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    writer = MlflowWriter(uri, "exp", parent_name="parent", parent_tags={"a": 1},
                          parent_params={"p": 2}, flush_seconds=3600)
    calls: dict[str, int] = {}
    real = writer.client

    class Counting:  # the real client, counted
        def __getattr__(self, name: str):
            calls[name] = calls.get(name, 0) + 1
            return getattr(real, name)

    writer.client = Counting()  # type: ignore[assignment]
    with writer.held():  # everything queued before the writer thread looks
        for i in range(3):
            key = f"run{i}"
            writer.start_child(key, name=key, params={"depth": i},
                               tags={"study.status": "running"})
            for epoch in range(1, 6):
                writer.log_metrics(key, {"val": epoch / 10 + i}, step=epoch)
            writer.set_tags(key, {"study.status": "completed"})
            writer.end_child(key, "FINISHED")
        writer.set_tags("", {"b": 3})
    assert writer.close("FINISHED")
    # One create, one log_batch (params, 5 epochs of metrics, tags) and one end per run;
    # one log_batch for the parent's tags; then the parent's end.
    assert calls == {"create_run": 3, "log_batch": 4, "set_terminated": 4}

    client = MlflowClient(uri)
    for i in range(3):
        run = client.get_run(writer.child_ids[f"run{i}"])
        assert run.info.status == "FINISHED"
        assert run.data.params == {"depth": str(i)}
        assert run.data.tags["study.status"] == "completed"
        assert run.data.tags["mlflow.parentRunId"] == writer.parent_run_id
        hist = client.get_metric_history(run.info.run_id, "val")
        assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [
            (e, e / 10 + i) for e in range(1, 6)]
    parent = client.get_run(writer.parent_run_id)
    assert parent.data.tags["b"] == "3" and parent.data.params == {"p": "2"}
    assert parent.info.status == "FINISHED"


def test_seeded_optuna_storage_is_the_storage_optuna_makes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    plain, first, second = (tmp_path / f"{n}.db" for n in ("plain", "first", "second"))
    optuna.storages.RDBStorage(f"sqlite:///{plain}").engine.dispose()
    assert seed_optuna_storage(f"sqlite:///{first}")  # makes the template, then a copy
    assert seed_optuna_storage(f"sqlite:///{second}")  # a copy
    assert not seed_optuna_storage(f"sqlite:///{second}")

    def contents(db: Path) -> tuple:
        with sqlite3.connect(db) as c:
            schema = _schema(c)
            rows = {t: c.execute(f'SELECT * FROM "{t}"').fetchall()
                    for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return schema, rows

    assert contents(first) == contents(plain) == contents(second)
    storage = optuna.storages.RDBStorage(f"sqlite:///{second}")
    s = optuna.create_study(storage=storage, study_name="s")
    s.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2
