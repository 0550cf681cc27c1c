"""The driver's run ledger: one RunRecord per training run, kept as Tune reports.

The study's result, its outcome and the report are built from these records. Pure Python:
no Ray, no MLflow (``study.tune.callback`` feeds it, ``study.tracking.child_runs``
mirrors it to MLflow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from study.records import ENDED, METRIC_KEYS, RunRecord, RunStatus, count_statuses

__all__ = ["RunLedger"]


class RunLedger:
    """Every run's record by run key, and which Tune trial trains which runs."""

    def __init__(self) -> None:
        self.records: dict[str, RunRecord] = {}
        self.by_trial: dict[str, list[str]] = {}  # Tune trial id -> its run keys

    def start_block(self, trial_id: str, block: Sequence[Mapping[str, Any]]) -> None:
        """A Tune trial starts (or restarts) training `block`: its runs not yet ended are
        running, in that trial."""
        keys = []
        for run in block:
            key = run["run_key"]
            keys.append(key)
            rec = self.records.get(key)
            if rec is None:
                rec = self.records[key] = RunRecord.from_run(run)
            if rec.status not in ENDED:
                rec.status = RunStatus.RUNNING
            rec.trial_id = trial_id
        self.by_trial[trial_id] = keys

    def knows(self, trial_id: str) -> bool:
        return trial_id in self.by_trial

    def runs_of(self, trial_id: str) -> list[RunRecord]:
        """The records of the runs trial `trial_id` trains (none for an unknown trial)."""
        return [self.records[k] for k in self.by_trial.get(trial_id, ())]

    @staticmethod
    def place(rec: RunRecord, r: Mapping[str, Any], where: Mapping[str, Any]) -> None:
        """The run's first report: where it trains and what its model costs."""
        rec.node, rec.device = where.get("node_id", ""), where.get("device", "")
        rec.model_params, rec.macs = r.get("model_params"), r.get("macs")
        rec.fused = int(r.get("fused", 1))

    @staticmethod
    def move(rec: RunRecord, where: Mapping[str, Any]) -> bool:
        """True (and the record updated) if a retry moved the run to another node."""
        if where.get("node_id", rec.node) == rec.node:
            return False
        rec.node, rec.device = where["node_id"], where.get("device", rec.device)
        return True

    @staticmethod
    def add_epoch(rec: RunRecord, r: Mapping[str, Any], epoch: int) -> bool:
        """Record `epoch`'s metrics and status; False (nothing recorded) for an epoch a
        retried attempt repeats, so each epoch is recorded once."""
        if epoch <= rec.epochs:
            return False
        metrics = {k: float(r[k]) for k in METRIC_KEYS if k in r}
        rec.history.append({"epoch": epoch, **metrics})
        rec.metrics = metrics
        rec.epochs = epoch
        rec.status = r.get("status", RunStatus.RUNNING)
        return True

    @staticmethod
    def end(rec: RunRecord, status: RunStatus) -> None:
        """The run ended without a final report of its own (pruned, stopped)."""
        rec.status = status

    @staticmethod
    def fail(rec: RunRecord, error: str) -> None:
        rec.error = error or "unknown error"
        rec.status = RunStatus.FAILED

    def counts(self) -> dict[str, int]:
        """How many runs are in each status (every status present)."""
        return count_statuses(self.records.values())
