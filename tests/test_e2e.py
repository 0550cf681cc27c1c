"""End to end on real parts: local Ray, Optuna on SQLite, MLflow on SQLite, real training."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

import study
from study.tune.runner import METRIC_KEYS
from tests.conftest import INJECTED_FAULTS, SPECS, session_processes, tiny_spec


def write_spec(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def mlflow_runs(name, where=None):
    client = MlflowClient(f"sqlite:///{where or os.getcwd()}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture(scope="module")
def tiny(ray_local, tmp_path_factory):
    """One tiny study (2 configurations x 2 levels x 2 repeats) run twice in a folder of its
    own; the tests below each check one part of what it left."""
    where = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        for var in ("MLFLOW_TRACKING_URI", "STUDY_OPTUNA_STORAGE", "STUDY_RESULTS_DIR",
                    "RAY_ADDRESS"):
            mp.delenv(var, raising=False)
        path = write_spec(where / "tiny.yaml", tiny_spec())
        res = study.run(path, overrides={"repeats": 2}, echo=None)
        again = study.run(path, overrides={"repeats": 2}, echo=None)
    client, parents, children = mlflow_runs("tiny", where)
    first = [c for c in children if c.data.tags["mlflow.parentRunId"] == res.parent_run_id]
    return SimpleNamespace(where=where, res=res, again=again, client=client,
                           parents=parents, children=children, first=first,
                           parent=next(p for p in parents
                                       if p.info.run_id == res.parent_run_id))


def test_the_study_finishes_with_every_run_completed(tiny):
    res = tiny.res
    assert res.status == "finished"
    assert res.counts()["completed"] == 8 and len(res.runs) == 8
    assert len(res.configs) == 2 and res.best is not None
    assert res.best_config == res.best.params and set(res.best_config) == {"depth", "lr"}


def test_the_parent_run_records_the_study(tiny):
    parent = tiny.parent
    assert parent.info.status == "FINISHED"
    assert parent.data.params["compare"] == "bias: [True, False]"
    assert parent.data.tags["study.status"] == "finished"
    assert parent.data.tags["study.runs_completed"] == "8"
    assert len(tiny.first) == 8


def test_every_run_is_a_child_with_its_params_tags_and_metrics(tiny):
    by_key = {c.data.tags["study.run_key"]: c for c in tiny.first}
    for rec in tiny.res.runs:
        c = by_key[rec.run_key]
        assert c.info.run_id == rec.mlflow_run_id
        assert c.info.status == "FINISHED"
        p, t = c.data.params, c.data.tags
        # every hyperparameter and derived figure as a param
        assert p["depth"] == str(rec.params["depth"]) and p["bias"] == str(rec.level)
        assert p["width"] == "4" and p["norm"] == "batch" and p["seed"] == str(rec.seed)
        assert int(p["model_params"]) > 0 and int(p["macs_per_example"]) > 0
        # tags: Optuna trial, seed, pair, node, device, Ray trial
        assert t["study.optuna_trial"] == str(rec.optuna_trial)
        assert t["study.seed"] == str(rec.seed) and t["study.pair"] == rec.pair
        assert t["study.node"] and t["study.device"] == "cpu" and t["ray.trial_id"]
        assert t["study.status"] == "completed"
        # per-epoch metrics with steps; nothing else logged as a metric
        assert set(c.data.metrics) == set(METRIC_KEYS)
        hist = tiny.client.get_metric_history(c.info.run_id, "val_accuracy")
        assert sorted(m.step for m in hist) == [1, 2]
        assert math.isclose(hist[-1].value, rec.metrics["val_accuracy"])


def test_optuna_is_told_each_configurations_mean_over_its_runs(tiny):
    res = tiny.res
    ost = optuna.load_study(study_name=res.optuna_study, storage=res.optuna_storage)
    trials = ost.get_trials()
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    for cfg in res.configs:
        vals = [r.metrics["val_accuracy"] for r in res.runs if r.config == cfg.index]
        assert len(vals) == 4
        assert math.isclose(trials[cfg.optuna_trial].value, sum(vals) / 4)


def test_the_report_is_on_disk_and_in_the_parent_run(tiny):
    res = tiny.res
    assert res.effects and res.effects[0].n == 4 and "verdict on test_accuracy" in res.verdict
    html = (Path(res.report_dir) / "report.html").read_text()
    assert "data:image/png;base64," in html and "Verdict" in html
    for rec in res.runs:  # every number is traceable to its child run
        assert rec.run_key in html and rec.mlflow_run_id[:8] in html
    arts = {a.path for a in tiny.client.list_artifacts(tiny.parent.info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/effects.png"} <= arts


def test_the_report_is_rebuilt_from_the_stores_alone_without_ray(tiny):
    code = ("import sys; from study.cli import main; rc = main(['report', "
            f"{tiny.res.execution!r}, '--out', 'rebuilt', '--no-log']); "
            "assert 'ray' not in sys.modules; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tiny.where, env={**os.environ, "MLFLOW_TRACKING_URI":
                                            f"sqlite:///{tiny.where}/mlflow.db"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert tiny.res.verdict.splitlines()[:4] == r.stdout.splitlines()[:4]
    rebuilt = json.loads((tiny.where / "rebuilt" / "effects.json").read_text())
    saved = json.loads((Path(tiny.res.report_dir) / "effects.json").read_text())
    assert rebuilt == saved


def test_runs_are_read_back_from_mlflow_page_by_page(tiny, monkeypatch):
    from study.tracking import read

    uri = f"sqlite:///{tiny.where}/mlflow.db"
    _, whole, _ = read.runs_from_mlflow(uri, "tiny", tiny.res.execution)
    monkeypatch.setattr(read, "PAGE", 3)  # 8 children: pages of 3, 3 and 2
    _, paged, parent = read.runs_from_mlflow(uri, "tiny", tiny.res.execution)
    assert paged == whole and len(paged) == 8
    assert {r["run_key"] for r in paged} == {r.run_key for r in tiny.res.runs}
    assert parent.info.run_id == tiny.res.parent_run_id


def test_a_second_invocation_gives_the_same_configurations_and_numbers(tiny):
    res, again = tiny.res, tiny.again
    assert [c.params for c in again.configs] == [c.params for c in res.configs]
    assert {r.run_key: r.metrics["val_accuracy"] for r in again.runs} == \
        {r.run_key: r.metrics["val_accuracy"] for r in res.runs}
    assert len(tiny.parents) == 2 and len(tiny.children) == 16


def test_crashed_and_diverged_runs_are_recorded_and_the_study_goes_on(ray_local, workdir):
    # conv biases starting at 100 in one conv layer without norm: a loss of 7e4 in epoch 1
    raw = tiny_spec(name="crashy", compare={"bias_init": [0.0, 100.0]},
                    model={"name": "cnn", "width": 4, "norm": "none", "depth": 1},
                    space={"lr": {"log": [0.01, 0.1]}},
                    search={"sampler": "random", "trials": 2, "seed": 0},
                    execution={"retries": 1}, train={"epochs": 3, "batch_size": 32})
    res = study.run(write_spec(workdir / "crashy.yaml", raw), echo=None)
    assert res.status == "finished"
    counts = res.counts()
    assert counts["failed"] == 1 and counts["diverged"] == 2 and counts["completed"] == 1
    failed = next(r for r in res.runs if r.status == "failed")
    assert f"crashy/{failed.run_key}" == INJECTED_FAULTS["crash"]
    assert "injected failure" in failed.error
    diverged = [r for r in res.runs if r.status == "diverged"]
    assert all(r.epochs < 3 for r in diverged)
    # the failed run is left out of its configuration's value; the diverged ones count
    c0 = next(c for c in res.configs if c.index == 0)
    assert c0.usable_runs == 1
    _, parents, children = mlflow_runs("crashy")
    status = {c.data.tags["study.run_key"]: (c.info.status, c.data.tags["study.status"])
              for c in children}
    assert status["c000-bias_init=0.0-s0"] == ("FAILED", "failed")
    assert status["c000-bias_init=100.0-s0"] == ("FINISHED", "diverged")
    err = next(c for c in children if c.data.tags["study.run_key"] == "c000-bias_init=0.0-s0")
    assert "injected failure" in err.data.tags["study.error"]
    assert parents[0].data.tags["study.runs_failed"] == "1"
    assert parents[0].data.tags["study.runs_diverged"] == "2"


def test_fused_study_equals_the_unfused_one(ray_local, workdir):
    """`train.fuse: on`: a configuration's runs train as one model in one Tune trial, each
    still its own MLflow child with its own metrics, equal to separate training."""
    raw = tiny_spec(name="fused", repeats=2, train={"epochs": 2, "batch_size": 32,
                                                    "fuse": "on"})
    fused = study.run(write_spec(workdir / "f.yaml", raw), echo=None)
    raw["train"]["fuse"] = "off"
    plain = study.run(write_spec(workdir / "p.yaml", raw), echo=None)
    assert [c.params for c in fused.configs] == [c.params for c in plain.configs]
    a = {r.run_key: r for r in fused.runs}
    b = {r.run_key: r for r in plain.runs}
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        assert a[k].status == b[k].status == "completed"
        assert abs(a[k].metrics["val_loss"] - b[k].metrics["val_loss"]) < 1e-5
        assert abs(a[k].metrics["val_accuracy"] - b[k].metrics["val_accuracy"]) < 0.02
    assert {r.fused for r in fused.runs} == {4} and {r.fused for r in plain.runs} == {1}
    assert len({r.trial_id for r in fused.runs}) == 2  # one Tune trial per configuration
    _, parents, children = mlflow_runs("fused")
    assert len(parents) == 2 and len(children) == 16
    assert {c.data.params["fused_models"] for c in children} == {"4", "1"}


def test_gpu_requested_where_ray_has_none_fails_before_any_run(ray_local, workdir):
    path = write_spec(workdir / "g.yaml", tiny_spec(name="gpu", resources={"gpu": 1}))
    with pytest.raises(study.SpecError) as ei:
        study.run(path, echo=None)
    msg = str(ei.value)
    assert str(path) in msg and "`resources.gpu`" in msg and "0 GPUs" in msg
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    assert client.get_experiment_by_name("gpu") is None  # nothing was started


def test_cli_run_prints_summary_and_leaves_no_process_behind(workdir):
    import threading
    import time

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "study.cli", "run", str(SPECS / "conv_bias_bn.yaml"),
         "--set", "search.trials=1", "--set", "repeats=1", "--set", "train.epochs=1",
         "--set", "dataset.limit=200", "--set", "verdict.sequential=null"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workdir, env=env,
        start_new_session=True)
    seen: set[str] = set()  # the command lines of the study's processes while it runs

    def watch() -> None:
        while proc.poll() is None:
            seen.update(session_processes(proc.pid).values())
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    # the local Ray instance ran without the dashboard process (ray_adapter.lean_local_instance)
    assert any("raylet" in a for a in seen)
    assert not [a for a in seen if "dashboard/dashboard.py" in a]
    assert "runs done" in err  # live progress
    assert "study conv_bias_bn: finished" in out and "2 completed" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{workdir}/mlflow.db" in out
    _, parents, children = mlflow_runs("conv_bias_bn")
    assert len(parents) == 1 and len(children) == 2
    # the quick exit (study.cli.entry) stopped the Ray instance the study started: none of
    # its processes (raylet, GCS, monitor, agents, workers) outlives the command
    t0 = time.monotonic()
    while session_processes(proc.pid) and time.monotonic() - t0 < 10:
        time.sleep(0.2)
    assert session_processes(proc.pid) == {}


def test_worker_death_is_retried_from_the_last_checkpoint(ray_local, workdir):
    raw = tiny_spec(name="retry", repeats=1, space={}, search={"trials": 1}, compare=None,
                    train={"epochs": 4, "batch_size": 32},
                    execution={"checkpoint_every": 1})  # (by time: none in a tiny run)
    del raw["compare"]
    res = study.run(write_spec(workdir / "r.yaml", raw), echo=None)
    (rec,) = res.runs
    assert f"retry/{rec.run_key}@2" == INJECTED_FAULTS["retry"]  # its worker died once
    assert res.status == "finished" and rec.status == "completed" and rec.epochs == 4
    client, _, (child,) = mlflow_runs("retry")
    hist = client.get_metric_history(child.info.run_id, "val_accuracy")
    assert sorted(m.step for m in hist) == [1, 2, 3, 4]  # each epoch logged exactly once
    # continuing from the epoch-2 checkpoint gives the numbers of an uninterrupted run
    raw["name"] = "noretry"
    ref = study.run(write_spec(workdir / "n.yaml", raw), echo=None)
    assert [h["val_accuracy"] for h in ref.runs[0].history] == \
        [h["val_accuracy"] for h in rec.history]


def _wait_for_finished_children(uri, name, at_least, proc, timeout=240):
    import time

    t0 = time.monotonic()
    # Opening a new SQLite MLflow store runs its schema migrations: let the driver do that
    # alone (two processes migrating one new file collide). It opens Optuna's store after.
    optuna_db = Path(uri[len("sqlite:///"):]).parent / "optuna.db"
    while not optuna_db.exists() and time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "driver exited"
        time.sleep(0.2)
    client = MlflowClient(uri)
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "driver exited"
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            runs = client.search_runs([exp.experiment_id],
                                      "tags.`study.status` = 'completed'", max_results=500)
            if len(runs) >= at_least:
                return
        time.sleep(0.3)
    raise AssertionError("the study made no progress")


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT", "SIGTERM"])
def test_killed_driver_resumes_to_exactly_the_uninterrupted_counts(workdir, sig):
    import signal

    # long enough (16 runs of 12 epochs) that the signal lands while runs train
    raw = tiny_spec(name="resumable", repeats=2, search={"sampler": "tpe", "trials": 4,
                                                         "seed": 1, "startup_trials": 2,
                                                         "pending": 2},
                    train={"epochs": 12, "batch_size": 32})
    spec_path = write_spec(workdir / "resumable.yaml", raw)
    uri = f"sqlite:///{workdir}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(spec_path)],
                              cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_finished_children(uri, "resumable", 5, driver)
        if sig == "SIGTERM":  # as `kill PID`, a scheduler or an orchestrator sends it
            os.kill(driver.pid, signal.SIGTERM)
        else:  # Ctrl-C reaches the whole foreground group; SIGKILL takes Ray down too
            os.killpg(driver.pid, getattr(signal, sig))
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    if sig in ("SIGINT", "SIGTERM"):  # the study winds down and says so
        assert driver.returncode == 130, err[-2000:]
        assert "INTERRUPTED" in err
    else:
        assert driver.returncode == -9

    r = subprocess.run([sys.executable, "-m", "study.cli", "resume", str(spec_path)],
                       cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming resumable-" in r.stderr

    client, parents, children = mlflow_runs("resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["study.status"] == "finished"
    keys = [c.data.tags["study.run_key"] for c in children]
    assert len(keys) == 16 and len(set(keys)) == 16  # no duplicate, none missing
    assert all(c.info.status == "FINISHED" for c in children), [
        (c.data.tags["study.run_key"], c.info.status, c.data.tags.get("study.status"),
         c.data.tags.get("study.error", "")[-300:]) for c in children]
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(1, 13))  # each epoch once
    ost = optuna.load_study(study_name=parents[0].data.tags["study.execution"],
                            storage=f"sqlite:///{workdir}/optuna.db")
    trials = ost.get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)

    # the same configurations as an uninterrupted execution of the same spec
    ref = subprocess.run([sys.executable, "-m", "study.cli", "run", str(spec_path), "--quiet"],
                         cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_exec = [ln for ln in ref.stdout.splitlines() if ln.startswith("Optuna:")][0]
    ref_study = optuna.load_study(study_name=ref_exec.split("'")[1],
                                  storage=f"sqlite:///{workdir}/optuna.db")
    assert [t.params for t in ref_study.get_trials()] == [t.params for t in trials]


def test_asha_stops_runs_early_and_optuna_hears_pruned(ray_local, workdir):
    raw = tiny_spec(name="asha", compare=None, repeats=1,
                    space={"lr": {"log": [1.0e-5, 0.2]}},
                    search={"sampler": "random", "trials": 8, "seed": 0, "scheduler": "asha",
                            "grace_period": 1, "reduction_factor": 2},
                    train={"epochs": 6, "batch_size": 32})
    del raw["compare"]
    res = study.run(write_spec(workdir / "asha.yaml", raw), echo=None)
    assert res.status == "finished"
    pruned = [r for r in res.runs if r.status == "pruned"]
    assert pruned and all(r.epochs < 6 for r in pruned)
    assert all(r.status in ("completed", "pruned") for r in res.runs)
    ost = optuna.load_study(study_name=res.optuna_study, storage=res.optuna_storage)
    states = {t.number: t.state.name for t in ost.get_trials()}
    for r in res.runs:
        assert states[r.config] == ("PRUNED" if r.status == "pruned" else "COMPLETE")
    _, _, kids = mlflow_runs("asha")
    tags = {k.data.tags["study.run_key"]: (k.info.status, k.data.tags["study.status"])
            for k in kids}
    assert tags[pruned[0].run_key] == ("FINISHED", "pruned")


def test_file_dataset_reaches_workers_through_the_object_store(ray_local, workdir,
                                                               monkeypatch):
    import numpy as np

    import study.data.load

    rng = np.random.default_rng(0)
    np.savez(workdir / "d.npz", x_train=rng.integers(0, 255, (120, 6, 6), dtype=np.uint8),
             y_train=rng.integers(0, 3, 120), x_test=rng.integers(0, 255, (30, 6, 6),
                                                                  dtype=np.uint8),
             y_test=rng.integers(0, 3, 30))
    raw = tiny_spec(name="npzstudy", dataset=f"npz:{workdir / 'd.npz'}",
                    search={"sampler": "random", "trials": 1, "seed": 0})
    real = study.data.load.load_splits

    def read_then_delete(ds):  # the driver reads the file once; then it is gone
        splits = real(ds)
        Path(ds.path).unlink()
        return splits

    monkeypatch.setattr(study.data.load, "load_splits", read_then_delete)
    res = study.run(write_spec(workdir / "n.yaml", raw), echo=None)
    assert not (workdir / "d.npz").exists()
    assert res.status == "finished" and res.counts()["completed"] == 2
    assert res.runs[0].model_params and res.runs[0].metrics["test_accuracy"] >= 0
