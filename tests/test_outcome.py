"""The outcome is told truly: exit codes, the one line that says what to do, the MLflow
parent run's status, the writer's count of dropped writes, and interval labels that follow
`verdict.alpha`. The `study` command runs as a subprocess on real Ray (its own local
instance, beside a stale `ray_current_cluster` file), real SQLite stores, real training."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.report.build import ReportInput, build_report, verdict_table
from study.report.stats import ci_label, paired_effects
from study.spec import parse_spec
from tests.conftest import tiny_spec
from tests.test_analysis import table

# What must never reach the terminal: a Python traceback, Ray's native stack dump, Tune's
# advice to call Tuner.restore, Ray's token notice for a local instance.
NEVER = ("Traceback", "SIGTERM received at time", "Tuner.restore",
         "Token authentication is")


# --------------------------------------------------------------------------------------
# Interval labels
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "label"), [(0.05, "95% CI"), (0.1, "90% CI"),
                                              (0.01, "99% CI"), (0.2, "80% CI")])
def test_interval_labels_follow_alpha(alpha, label):
    assert ci_label(alpha) == label
    spec = parse_spec(tiny_spec(verdict={"alpha": alpha}))
    rows = table(0.0, n_configs=2, seeds=3)
    effects = paired_effects(rows, knob="bias", levels=[True, False], metric="test_accuracy",
                             margin=0.005, alpha=alpha)
    rep = build_report(ReportInput(spec=spec, execution="x", rows=rows))
    texts = {"sentence": effects[0].sentence(), "terminal": verdict_table(rep, spec),
             "markdown": rep.markdown, "html": rep.html}
    for where, text in texts.items():
        assert label in text, where
        others = {ci_label(a) for a in (0.05, 0.1, 0.01, 0.2)} - {label}
        assert not [o for o in others if o in text], where
    # the interval printed is the one at that level (wider for a smaller alpha)
    wide = paired_effects(rows, knob="bias", levels=[True, False], metric="test_accuracy",
                          margin=0.005, alpha=alpha / 2)[0]
    assert wide.ci_low < effects[0].ci_low < effects[0].ci_high < wide.ci_high


# --------------------------------------------------------------------------------------
# The MLflow writer: a refused run is dropped, counted and named; the others go on
# --------------------------------------------------------------------------------------


def test_writer_drops_a_refused_run_counts_it_and_sends_the_others(tmp_path: Path):
    from study.tracking.writer import MlflowWriter

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    writer = MlflowWriter(uri, "exp", parent_name="parent", parent_tags={},
                          parent_params={}, flush_seconds=3600)
    keys = ["bad", "ok1", "ok2"]
    for key in keys:
        writer.start_child(key, name=key, params={"depth": 1}, tags={})
    assert writer.flush(30)
    client = MlflowClient(uri)
    # someone deletes a run in the MLflow UI while the study runs: MLflow refuses its writes
    client.delete_run(writer.child_ids["bad"])
    with writer.held():  # queued before the sending thread looks: "bad" first
        for key in keys:
            writer.log_metrics(key, {"val": 0.5}, step=1)
            writer.set_tags(key, {"study.status": "completed"})
            writer.end_child(key, "FINISHED")
    assert writer.flush(30)  # "bad" refused and dropped; every other run sent
    assert writer.pending() == 0
    for key in ("ok1", "ok2"):
        assert client.get_run(writer.child_ids[key]).info.status == "FINISHED"
    writer.log_metrics("bad", {"val": 0.6}, step=2)  # a later write for it: dropped too
    assert writer.pending() == 0
    assert not writer.close("FINISHED")  # not "all is well"
    assert writer.dropped_writes == 4 and list(writer.dropped_runs) == ["bad"]
    assert "active" in writer.dropped_runs["bad"]  # MLflow's reason
    parent = client.get_run(writer.parent_run_id)
    assert parent.data.tags["study.mlflow_dropped_writes"] == "4"
    assert parent.data.tags["study.mlflow_dropped_runs"] == "bad"
    assert parent.info.status == "FINISHED"


# --------------------------------------------------------------------------------------
# The `study` command
# --------------------------------------------------------------------------------------


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A Ray temp folder of the test's own (short: socket paths), holding the file a bare
    ray.init() would follow to a cluster `ray start` made, naming one that is gone."""
    root = Path(tempfile.mkdtemp(prefix="so-", dir="/tmp"))
    (root / "ray").mkdir()
    (root / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _env(workdir: Path, ray_tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "STUDY_INJECT_FAILURE", "RAY_AUTH_MODE")}
    return {**env, "RAY_TMPDIR": str(ray_tmp),
            "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db",
            "STUDY_OPTUNA_STORAGE": f"sqlite:///{workdir}/optuna.db", **extra}


def _spec(workdir: Path, **over) -> Path:
    raw = tiny_spec(**{"search": {"sampler": "random", "trials": 1, "seed": 3}, **over})
    path = workdir / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "study.cli", *args], cwd=workdir, env={
        **env, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=240)


def _clean(text: str) -> None:
    found = [n for n in NEVER if n in text]
    assert not found, (found, text[-4000:])


def _parents(workdir: Path) -> list:
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, "tags.`study.execution` != ''") if exps else []


def _one_line(stderr: str, start: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith(start)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_every_run_failing_exits_1_and_says_so(workdir, ray_tmp):
    spec = _spec(workdir)
    inject = "tiny/c000-bias=True-s3,tiny/c000-bias=False-s3"  # the only configuration
    r = _cli(workdir, _env(workdir, ray_tmp, STUDY_INJECT_FAILURE=inject), "run", str(spec))
    assert r.returncode == 1, r.stderr[-3000:]
    line = _one_line(r.stderr, "study FAILED")
    assert "every run failed (2 of 2)" in line and "injected failure" in line
    _clean(r.stdout + r.stderr)
    (parent,) = _parents(workdir)
    assert parent.info.status == "FAILED" and parent.data.tags["study.status"] == "failed"
    # its own local instance, not the gone cluster the stale file names
    assert f"Ray {os.cpu_count()} CPU" in r.stderr


def test_a_report_that_fails_exits_1_and_study_report_rebuilds_it(workdir, ray_tmp):
    # results go to a URI, so reports go to ./study_reports: here a file, not a folder
    (workdir / "study_reports").write_text("in the way")
    spec = _spec(workdir, storage={"results": f"file://{workdir}/results"})
    r = _cli(workdir, _env(workdir, ray_tmp), "run", str(spec), "--quiet")
    assert r.returncode == 1, r.stderr[-3000:]
    line = _one_line(r.stderr, "report FAILED")
    (parent,) = _parents(workdir)
    execution = parent.data.tags["study.execution"]
    assert f"`study report {execution}`" in line and "study_reports" in line
    _clean(r.stdout + r.stderr)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["study.status"] == "finished"  # every run ended and is stored
    assert "study_reports" in parent.data.tags["study.report_error"]
    # the command it names works
    rebuilt = _cli(workdir, _env(workdir, ray_tmp), "report", execution, "--out",
                   str(workdir / "rebuilt"))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (workdir / "rebuilt" / "report.html").is_file()


def test_mlflow_writes_dropped_exit_1_counted_and_tagged(workdir, ray_tmp):
    """A child run deleted in MLflow while it trains: its later writes are refused."""
    # 40 epochs of 2000 examples: several seconds of writes still to come when the watcher,
    # polling MLflow on a loaded machine, finds the run (at 400 examples it once found it
    # only after the run had ended)
    spec = _spec(workdir, train={"epochs": 40, "batch_size": 32},
                 dataset={"name": "synthetic", "samples": 2000},
                 execution={"concurrency": 1})
    victim = "c000-bias=True-s3"
    deleted: list[str] = []

    def delete_when_it_appears() -> None:
        db = workdir / "mlflow.db"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180 and not deleted:
            # the driver opens Optuna's store once MLflow's is made (two processes must not
            # migrate one SQLite file at once)
            if (workdir / "optuna.db").exists():
                client = MlflowClient(f"sqlite:///{db}")
                exps = [e.experiment_id for e in client.search_experiments()]
                runs = client.search_runs(exps, f"attributes.run_name = '{victim}'") \
                    if exps else []
                if runs:
                    client.delete_run(runs[0].info.run_id)
                    deleted.append(runs[0].info.run_id)
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=delete_when_it_appears, daemon=True)
    watcher.start()
    r = _cli(workdir, _env(workdir, ray_tmp), "run", str(spec), "--quiet")
    watcher.join(5)
    assert deleted, r.stderr[-3000:]
    assert r.returncode == 1, r.stderr[-3000:]
    line = _one_line(r.stderr, "MLflow FAILED to store")
    assert f"(runs: {victim})" in line and "study.mlflow_dropped_writes" in line
    _clean(r.stdout + r.stderr)
    (parent,) = _parents(workdir)
    n = int(parent.data.tags["study.mlflow_dropped_writes"])
    assert n >= 2 and f"MLflow FAILED to store {n} write(s)" in line  # its end, at least
    assert parent.data.tags["study.mlflow_dropped_runs"] == victim
    assert parent.data.tags["study.status"] == "finished"
    # the other run of the pair was not held up: it is complete in MLflow
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (other,) = client.search_runs([parent.info.experiment_id],
                                  "attributes.run_name = 'c000-bias=False-s3'")
    assert other.info.status == "FINISHED" and other.data.tags["study.status"] == "completed"
    assert len(client.get_metric_history(other.info.run_id, "val_accuracy")) == 40


def _sigterm_when(proc: subprocess.Popen, ready) -> tuple[str, str]:
    """Send SIGTERM once ready(children's names, stderr so far) holds; the output."""
    import psutil

    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180 and proc.poll() is None:
        try:
            names = [c.name() for c in psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            names = []
        if ready(names, "".join(err)):
            os.kill(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.02)
    out = proc.stdout.read()
    proc.wait(timeout=120)
    reader.join(10)
    return out, "".join(err)


def _start(workdir: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen([sys.executable, "-m", "study.cli", *args], cwd=workdir,
                            env={**env, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_sigterm_while_ray_starts_exits_130_without_a_stack_dump(workdir, ray_tmp):
    spec = _spec(workdir)
    proc = _start(workdir, _env(workdir, ray_tmp), "run", str(spec))
    # Ray's GCS and raylet are up: ray.init is connecting the driver
    out, err = _sigterm_when(proc, lambda names, _: "raylet" in names)
    assert proc.returncode == 130, err[-3000:]
    line = _one_line(err, "study INTERRUPTED")
    assert "before any run started" in line and f"`study run {spec}`" in line
    _clean(out + err)
    assert not [p for p in _parents(workdir) if p.info.status == "RUNNING"]


def test_sigterm_during_the_runs_exits_130_with_the_resume_command(workdir, ray_tmp):
    spec = _spec(workdir, train={"epochs": 40, "batch_size": 32},
                 dataset={"name": "synthetic", "samples": 400})
    proc = _start(workdir, _env(workdir, ray_tmp), "run", str(spec))
    out, err = _sigterm_when(proc, lambda _, err: "runs done" in err)  # trials under way
    assert proc.returncode == 130, err[-3000:]
    (parent,) = _parents(workdir)
    execution = parent.data.tags["study.execution"]
    line = _one_line(err, "study INTERRUPTED")
    assert line.endswith(f"continue with `study resume {execution}`")
    _clean(out + err)
    assert parent.info.status == "KILLED" and parent.data.tags["study.status"] == "interrupted"


@pytest.mark.parametrize("error", [RuntimeError("the Optuna study could not be made"),
                                   KeyboardInterrupt()])
def test_a_failure_after_the_parent_run_exists_never_leaves_it_running(
        ray_local, workdir, monkeypatch, error):
    import study
    from study.search import searcher

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(searcher.BlockSearcher, "__init__", refuse)
    path = workdir / "early.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(name="early")))
    with pytest.raises(type(error)):
        study.run(path, echo=None)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (parent,) = client.search_runs([client.get_experiment_by_name("early").experiment_id])
    stopped = isinstance(error, KeyboardInterrupt)
    assert parent.info.status == ("KILLED" if stopped else "FAILED")
    assert parent.data.tags["study.status"] == ("interrupted" if stopped else "failed")
    assert type(error).__name__ in parent.data.tags["study.error"]
