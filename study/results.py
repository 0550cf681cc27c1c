"""What a study execution returns: every run, every configuration, the best one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigRecord", "RunRecord", "StudyResult", "count_statuses"]

STATUSES = ("completed", "diverged", "pruned", "failed", "running", "stopped", "pending")
ENDED = ("completed", "diverged", "failed", "pruned")  # a run in these never runs again
METRIC_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
               "test_accuracy", "epoch_seconds", "train_seconds")  # logged every epoch


def last_line(text: str) -> str:
    """The last non-empty line of an error text (a traceback's message)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def count_statuses(runs: Any) -> dict[str, int]:
    """How many runs are in each status (every known status present, zeros included)."""
    out = dict.fromkeys(STATUSES, 0)
    for r in runs:
        out[r.status] = out.get(r.status, 0) + 1
    return out


@dataclass
class RunRecord:
    """One training run (one configuration, one level, one seed)."""

    run_key: str
    config: int
    optuna_trial: int
    level: Any
    seed: int
    pair: str
    params: dict[str, Any]  # every knob of the run
    status: str = "pending"  # pending, running, completed, diverged, failed
    epochs: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # last epoch's
    history: list[dict[str, float]] = field(default_factory=list)
    model_params: int | None = None
    macs: int | None = None
    trial_id: str = ""
    node: str = ""
    device: str = ""
    error: str = ""
    mlflow_run_id: str | None = None
    fused: int = 1  # models it trained fused with (itself included)

    def as_row(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key, "config": self.config, "optuna_trial": self.optuna_trial,
            "level": self.level, "seed": self.seed, "pair": self.pair, "status": self.status,
            "epochs": self.epochs, **{f"param.{k}": v for k, v in self.params.items()},
            **self.metrics, "model_params": self.model_params, "macs": self.macs,
            "node": self.node, "device": self.device, "mlflow_run_id": self.mlflow_run_id,
        }


@dataclass
class ConfigRecord:
    index: int
    optuna_trial: int
    params: dict[str, Any]  # the searched knobs Optuna chose
    value: float | None  # the aggregate told to Optuna (mean metric over usable runs)
    runs: int
    usable_runs: int


@dataclass
class StudyResult:
    name: str
    execution: str
    status: str  # finished, failed, interrupted
    metric: str
    mode: str
    runs: list[RunRecord]
    configs: list[ConfigRecord]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    optuna_storage: str
    optuna_study: str
    wall_seconds: float
    verdict: str = ""  # the terminal verdict table ("" when no report was built)
    report_dir: str | None = None  # report.md, report.html, PNGs
    effects: list[Any] = field(default_factory=list)  # study.analysis.Effect
    mlflow_dropped_writes: int = 0  # writes MLflow refused or never got (0: all stored)
    mlflow_dropped_runs: list[str] = field(default_factory=list)  # run keys they were for

    @property
    def best(self) -> ConfigRecord | None:
        scored = [c for c in self.configs if c.value is not None and math.isfinite(c.value)]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda c: c.value)  # type: ignore[arg-type, return-value]

    @property
    def best_config(self) -> dict[str, Any] | None:
        b = self.best
        return dict(b.params) if b else None

    def counts(self) -> dict[str, int]:
        return count_statuses(self.runs)

    def table(self) -> list[dict[str, Any]]:
        """One row per run: knobs as ``param.*``, final metrics, status, ids."""
        return [r.as_row() for r in self.runs]
