"""The driver's view of a running study: a Tune callback and the ASHA scheduler it uses.

One Tune trial trains a block of runs (``study.block``) and reports every run's latest
record each epoch; :class:`StudyCallback` turns those into one MLflow child run per training
run (each epoch logged exactly once, also across retries), the run ledger the result and
the report are built from, and the live progress line. Imported by the runner only when a
study runs (it imports Ray Tune).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray import tune

from study.analysis import USABLE
from study.redact import redact_spec
from study.results import ENDED, METRIC_KEYS, RunRecord, count_statuses
from study.results import last_line as _last_line
from study.spec import KNOBS, StudySpec

__all__ = ["PruningASHA", "StudyCallback"]

Echo = Callable[[str], None]


class StudyCallback(tune.Callback):
    """Tune callback: keeps the run ledger, writes MLflow children, prints progress."""

    def __init__(self, spec: StudySpec, writer: Any, echo: Echo | None,
                 progress_seconds: float = 5.0, cpus: float = 0.0) -> None:
        self.spec = spec
        self.writer = writer
        self.echo = echo
        self.records: dict[str, RunRecord] = {}
        self.children: set[str] = set()  # runs whose MLflow child was requested
        self.pruned_trials: set[str] = set()  # Tune trial ids the scheduler stopped early
        self.by_trial: dict[str, list[str]] = {}  # Tune trial id -> its runs
        self.started = time.monotonic()
        self._last_print = 0.0
        self._last_line = ""
        self._progress_seconds = progress_seconds
        self._warmed = False
        self._cpus = cpus  # the cluster's CPUs (0: unknown): see _maybe_warm
        self._idle_since: float | None = None
        self._completed = 0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the Tuner (for restore): the writer (a thread)
        # and the echo function stay behind, and the spec goes without its secrets.
        return {**self.__dict__, "writer": None, "echo": None,
                "spec": redact_spec(self.spec)}

    # Tune calls these with keyword arguments; see ray.tune.Callback.
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        keys = []
        for run in trial.config["block"]:
            key = run["run_key"]
            keys.append(key)
            rec = self.records.get(key)
            if rec is None:
                rec = RunRecord(run_key=key, config=run["config"],
                                optuna_trial=run["optuna_trial"], level=run["level"],
                                seed=run["seed"], pair=run["pair"],
                                params={k: run[k] for k in KNOBS if k in run})
                self.records[key] = rec
            if rec.status not in ENDED:
                rec.status = "running"
            rec.trial_id = trial.trial_id
        self.by_trial[trial.trial_id] = keys

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if trial.trial_id not in self.by_trial or "runs" not in result:
            return
        for key, r in result["runs"].items():
            self._run_result(self.records[key], r, result)
        self._progress()

    def _run_result(self, rec: RunRecord, r: Mapping[str, Any], where: Mapping[str, Any],
                    ) -> None:
        key = rec.run_key
        if rec.status in ENDED:
            return
        if r.get("status") == "failed":  # it raised on every attempt inside its block
            self._failed(rec, str(r.get("error", "")), int(r.get("attempts", 0)) or None)
            return
        epoch = int(r.get("epoch") or 0)
        if epoch == 0:
            return
        if key not in self.children:
            rec.node, rec.device = where.get("node_id", ""), where.get("device", "")
            rec.model_params, rec.macs = r.get("model_params"), r.get("macs")
            rec.fused = int(r.get("fused", 1))
            self._start_child(rec, where)
        elif where.get("node_id", rec.node) != rec.node:  # a retry moved it to another node
            rec.node, rec.device = where["node_id"], where.get("device", rec.device)
            self.writer.set_tags(key, {"study.node": rec.node, "study.device": rec.device,
                                       "study.host": where.get("host", "")})
        if epoch <= rec.epochs:
            # a retried attempt repeats an epoch already logged: each epoch is logged once
            return
        metrics = {k: float(r[k]) for k in METRIC_KEYS if k in r}
        rec.history.append({"epoch": epoch, **metrics})
        rec.metrics = metrics
        rec.epochs = epoch
        rec.status = r.get("status", "running")
        self.writer.log_metrics(key, metrics, step=epoch)
        if rec.status in USABLE:
            self._finish(rec, "FINISHED")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._completed += 1
        self._maybe_warm(trials)
        for key in self.by_trial.get(trial.trial_id, ()):
            rec = self.records[key]
            if rec.status != "running":
                continue
            if trial.trial_id in self.pruned_trials:  # the scheduler stopped it early
                self._finish(rec, "FINISHED", status="pruned")
            else:  # stopped without a final report (interrupted): it runs again on resume
                self._finish(rec, "KILLED", status="stopped")
        self._progress()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.echo is None:
            return
        why = _last_line(_error_text(trial))
        for key in self.by_trial.get(trial.trial_id, ()):
            if self.records[key].status == "running":
                self.echo(f"  run {key} failed on attempt {trial.num_failures}; retrying "
                          f"({why})")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _error_text(trial)
        for key in self.by_trial.get(trial.trial_id, ()):
            rec = self.records[key]
            if rec.status not in ENDED:
                self._failed(rec, error, trial.num_failures)
        self._progress()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._maybe_warm(trials)
        self._progress()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._progress(force=True)

    # -- helpers --

    def _maybe_warm(self, trials: list, idle_seconds: float = 0.5) -> None:
        """Import what the report needs (seconds of CPU) on a CPU that no trial uses, so
        that the report follows the last run at once without slowing any run down.

        Not before the first trial has completed (Tune is in its steady state by then:
        nothing else imports in the driver), and only once a whole CPU has been free of
        trials for `idle_seconds`: at once when the study runs fewer trials at a time than
        there are CPUs; at the end, when a slot has no trial left to run, when every CPU is
        a slot (the short gap between two trials does not count). Importing while every CPU
        runs a trial would slow those trials down."""
        if self._warmed or not self._completed:
            return
        busy = sum(float(self.spec.cpu) for t in trials if t.status == "RUNNING")
        now = time.monotonic()
        if self._cpus and self._cpus - busy < 1.0:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since >= idle_seconds or not self._cpus:
            self._warmed = True
            threading.Thread(target=_import_report_modules, daemon=True,
                             name="study-report-imports").start()

    def _failed(self, rec: RunRecord, error: str, attempts: int | None) -> None:
        rec.error = error or "unknown error"
        if rec.run_key not in self.children:
            self._start_child(rec, {})
        self.writer.set_tags(rec.run_key, {"study.error": _last_line(rec.error)[:4000]})
        self._finish(rec, "FAILED", status="failed")
        if self.echo:
            tries = f" after {attempts} attempt(s)" if attempts else ""
            self.echo(f"  run {rec.run_key} FAILED{tries}: {_last_line(rec.error)}")

    def _start_child(self, rec: RunRecord, result: Mapping[str, Any]) -> None:
        s = self.spec
        params: dict[str, Any] = {**rec.params, "seed": rec.seed, "config": rec.config,
                                  "dataset": s.dataset.name, "model": s.model,
                                  "fused_models": rec.fused}
        if s.compare_knob:
            params["compared"] = s.compare_knob
        if rec.model_params is not None:
            params["model_params"] = rec.model_params
            params["macs_per_example"] = rec.macs
        tags = {
            "study.name": s.name, "study.run_key": rec.run_key, "study.config": rec.config,
            "study.optuna_trial": rec.optuna_trial, "study.seed": rec.seed,
            "study.pair": rec.pair, "study.level": rec.level, "study.status": "running",
            "ray.trial_id": rec.trial_id, "study.node": result.get("node_id", ""),
            "study.host": result.get("host", ""), "study.device": result.get("device", ""),
        }
        if s.compare_knob:
            tags["study.arm"] = f"{s.compare_knob}={rec.level}"
        self.children.add(rec.run_key)
        self.writer.start_child(rec.run_key, name=rec.run_key, params=params, tags=tags)

    def _finish(self, rec: RunRecord, mlflow_status: str, status: str | None = None) -> None:
        if status is not None:
            rec.status = status
        self.writer.set_tags(rec.run_key, {"study.status": rec.status,
                                           "study.epochs": rec.epochs})
        self.writer.end_child(rec.run_key, mlflow_status)

    def counts(self) -> dict[str, int]:
        return count_statuses(self.records.values())

    def _progress(self, force: bool = False) -> None:
        if self.echo is None:
            return
        now = time.monotonic()
        if not force and now - self._last_print < self._progress_seconds:
            return
        self._last_print = now
        c = self.counts()
        done = sum(c[k] for k in ENDED)
        best = _best_so_far(self.records.values(), self.spec)
        line = (f"[{self.spec.name}] {done}/{self.spec.total_runs} runs done "
                f"({c['running']} running, {c['failed']} failed, {c['diverged']} diverged)"
                f"{best}")
        if force and line == self._last_line:
            return
        self._last_line = line
        self.echo(f"{line} | {now - self.started:.0f} s")


def _import_report_modules() -> None:
    """Import what the report needs (matplotlib; scikit-learn for Optuna's fANOVA) while
    runs train, so the report follows the last run at once. A module that
    cannot be imported is left to the report, which says so."""
    with contextlib.suppress(ImportError, OSError):
        import optuna.importance  # noqa: F401

        from study.report import pyplot

        pyplot()


def _best_so_far(records: Any, spec: StudySpec) -> str:
    by_cfg: dict[int, list[float]] = {}
    totals: dict[int, int] = {}
    for r in records:
        totals[r.config] = totals.get(r.config, 0) + 1
        v = r.metrics.get(spec.metric)
        if r.status in USABLE and v is not None and math.isfinite(v):
            by_cfg.setdefault(r.config, []).append(v)
    full = {k: sum(v) / len(v) for k, v in by_cfg.items()
            if totals[k] == spec.runs_per_config and len(v) == totals[k]}
    if not full:
        return ""
    pick = max if spec.mode == "max" else min
    k = pick(full, key=lambda i: full[i])
    return f" | best {spec.metric} {full[k]:.4f} (config {k})"


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path:
        try:
            return Path(path).read_text()
        except OSError:
            pass
    return str(getattr(trial, "error_msg", "") or "unknown error")


class PruningASHA(tune.schedulers.ASHAScheduler):
    """ASHA on a block's mean metric that remembers which blocks it stopped before their
    last epoch (to tell Optuna PRUNED and to record their runs as `pruned`, not as finished
    with an early metric). The runs of a pair share a block, so pairs are stopped together.
    """

    def __init__(self, pruned: set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pruned = pruned
        self.max_epochs = kwargs["max_t"]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == tune.schedulers.TrialScheduler.STOP and \
                result.get("epoch", self.max_epochs) < self.max_epochs:
            self.pruned.add(trial.trial_id)
        return action
