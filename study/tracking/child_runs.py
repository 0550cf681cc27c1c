"""One MLflow child run per training run, written through the study's MlflowWriter.

The child gets the run's knobs as params, its identity as ``study.*`` tags, one metric
step per epoch, and ends FINISHED (completed, diverged, pruned), FAILED or KILLED (stopped)
with its final ``study.status``. Writes are queued (the writer never blocks Tune).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from study.records import RunRecord, RunStatus, last_line
from study.redact import redact_spec
from study.spec import StudySpec

__all__ = ["ChildRuns"]


class ChildRuns:
    """Maps run records to MLflow child runs: start, metrics, tags, end."""

    def __init__(self, spec: StudySpec, writer: Any) -> None:
        self.spec = spec
        self.writer = writer
        self.children: set[str] = set()  # runs whose MLflow child was requested

    def __getstate__(self) -> dict[str, Any]:
        # pickled with the Tune callback: the writer (a thread) stays behind and the spec
        # goes without its secrets
        return {**self.__dict__, "writer": None, "spec": redact_spec(self.spec)}

    def has(self, key: str) -> bool:
        return key in self.children

    def start(self, rec: RunRecord, where: Mapping[str, Any]) -> None:
        """Request the run's child with its params and tags (`where`: the node it is on)."""
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
            "study.pair": rec.pair, "study.level": rec.level,
            "study.status": RunStatus.RUNNING, "ray.trial_id": rec.trial_id,
            "study.node": where.get("node_id", ""), "study.host": where.get("host", ""),
            "study.device": where.get("device", ""),
        }
        if s.compare_knob:
            tags["study.arm"] = f"{s.compare_knob}={rec.level}"
        if s.sequential:  # 0: a search run; k: added by the sequential phase after look k
            tags["study.look"] = rec.look
        self.children.add(rec.run_key)
        self.writer.start_child(rec.run_key, name=rec.run_key, params=params, tags=tags)

    def moved(self, rec: RunRecord, where: Mapping[str, Any]) -> None:
        """The run's node after a retry moved it."""
        self.writer.set_tags(rec.run_key, {"study.node": rec.node, "study.device": rec.device,
                                           "study.host": where.get("host", "")})

    def log_epoch(self, rec: RunRecord) -> None:
        """The run's latest epoch's metrics, as that epoch's step."""
        self.writer.log_metrics(rec.run_key, rec.metrics, step=rec.epochs)

    def failed(self, rec: RunRecord) -> None:
        """End a failed run's child FAILED with its error (started now if it had none)."""
        if not self.has(rec.run_key):
            self.start(rec, {})
        self.writer.set_tags(rec.run_key, {"study.error": last_line(rec.error)[:4000]})
        self.finish(rec, "FAILED")

    def finish(self, rec: RunRecord, mlflow_status: str) -> None:
        """End the child with MLflow status `mlflow_status` and the run's final tags."""
        self.writer.set_tags(rec.run_key, {"study.status": rec.status,
                                           "study.epochs": rec.epochs})
        self.writer.end_child(rec.run_key, mlflow_status)
