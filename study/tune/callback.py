"""The driver's view of a running study: a Tune callback and the ASHA scheduler it uses.

One Tune trial trains a block of runs (``study.train.block``) and reports every run's latest
record each epoch. :class:`StudyCallback` wires Tune's events to four single-purpose parts:
the run ledger (``study.tune.ledger``), one MLflow child run per training run, each epoch logged
exactly once, also across retries (``study.tracking.child_runs``), the live progress line
(``study.tune.progress``) and the report's imports (``study.tune.warmup``). Imported by the runner
only when a study runs (it imports Ray Tune).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from study.records import ENDED, USABLE, RunRecord, RunStatus
from study.spec import StudySpec
from study.tracking.child_runs import ChildRuns
from study.tune.ledger import RunLedger
from study.tune.progress import Echo, OnProgress, ProgressPrinter
from study.tune.warmup import ReportWarmup

__all__ = ["PruningASHA", "StudyCallback"]


class StudyCallback(tune.Callback):
    """Tune callback: keeps the run ledger, writes MLflow children, prints progress.

    Tune pickles its callbacks with the Tuner (for restore): the parts that hold the spec
    pickle it without its secrets, and leave their writer and echo function behind."""

    def __init__(self, spec: StudySpec, writer: Any, echo: Echo | None,
                 progress_seconds: float = 5.0, cpus: float = 0.0,
                 on_progress: OnProgress | None = None) -> None:
        self.ledger = RunLedger()
        self.mlflow = ChildRuns(spec, writer)
        self.progress = ProgressPrinter(spec, echo, every=progress_seconds,
                                        on_progress=on_progress)
        self.warmup = ReportWarmup(float(spec.cpu), cpus)  # cpus: the cluster's (0: unknown)
        self.pruned_trials: set[str] = set()  # Tune trial ids the scheduler stopped early

    @property
    def records(self) -> dict[str, RunRecord]:
        return self.ledger.records

    @property
    def children(self) -> set[str]:
        """Runs whose MLflow child was requested."""
        return self.mlflow.children

    def keep(self, rec: RunRecord) -> None:
        """A run that ended before a resume: counted as it is, its MLflow child kept."""
        self.records[rec.run_key] = rec
        self.children.add(rec.run_key)

    def counts(self) -> dict[str, int]:
        return self.ledger.counts()

    # Tune calls these with keyword arguments; see ray.tune.Callback.
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ledger.start_block(trial.trial_id, trial.config["block"])

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if not self.ledger.knows(trial.trial_id) or "runs" not in result:
            return
        for key, r in result["runs"].items():
            self._run_result(self.records[key], r, result)
        self._progress()

    def _run_result(self, rec: RunRecord, r: Mapping[str, Any], where: Mapping[str, Any],
                    ) -> None:
        if rec.status in ENDED:
            return
        if r.get("status") == RunStatus.FAILED:  # it raised on every attempt in its block
            self._failed(rec, str(r.get("error", "")), int(r.get("attempts", 0)) or None)
            return
        epoch = int(r.get("epoch") or 0)
        if epoch == 0:
            return
        if not self.mlflow.has(rec.run_key):
            self.ledger.place(rec, r, where)
            self.mlflow.start(rec, where)
        elif self.ledger.move(rec, where):
            self.mlflow.moved(rec, where)
        if not self.ledger.add_epoch(rec, r, epoch):
            return  # a retried attempt repeats an epoch already logged
        self.mlflow.log_epoch(rec)
        if rec.status in USABLE:
            self.mlflow.finish(rec, "FINISHED")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.warmup.trial_completed()
        self.warmup.maybe_start(trials)
        for rec in self.ledger.runs_of(trial.trial_id):
            if rec.status != RunStatus.RUNNING:
                continue
            if trial.trial_id in self.pruned_trials:  # the scheduler stopped it early
                self.ledger.end(rec, RunStatus.PRUNED)
                self.mlflow.finish(rec, "FINISHED")
            else:  # stopped without a final report (interrupted): it runs again on resume
                self.ledger.end(rec, RunStatus.STOPPED)
                self.mlflow.finish(rec, "KILLED")
        self._progress()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self.progress.on:
            return
        error = _error_text(trial)
        for rec in self.ledger.runs_of(trial.trial_id):
            if rec.status == RunStatus.RUNNING:
                self.progress.retrying(rec.run_key, trial.num_failures, error)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _error_text(trial)
        for rec in self.ledger.runs_of(trial.trial_id):
            if rec.status not in ENDED:
                self._failed(rec, error, trial.num_failures)
        self._progress()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.warmup.maybe_start(trials)
        self._progress()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.progress.update(self.records.values(), force=True, final=True)

    def _failed(self, rec: RunRecord, error: str, attempts: int | None) -> None:
        self.ledger.fail(rec, error)
        self.mlflow.failed(rec)
        self.progress.failed(rec, attempts)

    def _progress(self, force: bool = False) -> None:
        self.progress.update(self.records.values(), force=force)


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
