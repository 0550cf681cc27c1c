"""What a study execution returns: every run, every configuration, the best one."""

from __future__ import annotations

import datetime as _dt
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from study.redact import redact_text
from study.spec import KNOBS, NAME_PATTERN, SpecError

__all__ = ["ENDED", "STATUSES", "USABLE", "ConfigRecord", "Progress", "ReportError", "RunRecord",
           "RunStatus", "StudyResult", "StudyStatus", "check_execution_id", "check_run_id",
           "check_study_ref", "count_statuses", "dominates", "error_summary",
           "new_execution_id", "nondominated"]


class RunStatus(StrEnum):
    """Where one training run stands; the value is what MLflow's `study.status` tag holds
    and what compares equal to the plain string read back from a store."""

    COMPLETED = "completed"  # trained every epoch
    DIVERGED = "diverged"  # loss went NaN/inf or too high: keeps the value it reached
    PRUNED = "pruned"  # the scheduler stopped its block early
    FAILED = "failed"  # raised on every attempt
    RUNNING = "running"
    STOPPED = "stopped"  # interrupted: runs again on resume
    PENDING = "pending"  # planned, not started

    def __repr__(self) -> str:  # shown as the string it stands for, as before the enum
        return repr(self.value)


class StudyStatus(StrEnum):
    """Where a study execution stands; the value is its parent run's `study.status` tag."""

    RUNNING = "running"
    FINISHED = "finished"  # every run ended
    INTERRUPTED = "interrupted"  # stopped before every run ended: `study resume` goes on
    FAILED = "failed"  # every run failed, or the study could not go on

    def __repr__(self) -> str:
        return repr(self.value)


STATUSES = tuple(RunStatus)  # the order counts and tables list them in
ENDED = (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.FAILED,
         RunStatus.PRUNED)  # a run in these never runs again
USABLE = (RunStatus.COMPLETED, RunStatus.DIVERGED)  # ended with a value the analysis uses
METRIC_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
               "test_accuracy", "epoch_seconds", "train_seconds")  # logged every epoch


# A study name (spec.NAME_PATTERN) and an execution id: the name, the start time and a
# random suffix. Both become folder names and MLflow filter strings, so nothing else passes.
EXECUTION_RE = re.compile(rf"^{NAME_PATTERN}-[0-9]{{8}}-[0-9]{{6}}-[0-9a-f]{{4}}$")
NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # an MLflow run id (32 hex digits)
_ALLOWED_EXECUTION = ("a study execution id: the study name (a letter or digit, then up to "
                      "99 of letters, digits, '.', '_', '-'), then -YYYYMMDD-HHMMSS-xxxx "
                      "(xxxx: 4 hex digits)")


def new_execution_id(name: str) -> str:
    """A new execution id for study `name` (matches EXECUTION_RE)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def _shown(value: str) -> str:
    return repr(value if len(value) <= 120 else value[:120] + "...")


def check_execution_id(value: Any, where: str) -> str:
    """`value` if it is an execution id, else SpecError naming `where` it came from."""
    if not isinstance(value, str) or not EXECUTION_RE.fullmatch(value):
        raise SpecError(f"{where}: {_shown(str(value))} is not a valid execution id. "
                        f"Allowed: {_ALLOWED_EXECUTION}.")
    return value


def check_study_ref(value: str, where: str) -> str:
    """`value` if it is a study name or an execution id, else SpecError."""
    if not NAME_RE.fullmatch(value) and not EXECUTION_RE.fullmatch(value):
        raise SpecError(f"{where}: {_shown(value)} is neither a study name nor an execution "
                        f"id. Allowed: a study name (a letter or digit, then up to 99 of "
                        f"letters, digits, '.', '_', '-') or {_ALLOWED_EXECUTION}.")
    return value


def check_run_id(value: Any, where: str) -> str:
    """`value` if it looks like an MLflow run id, else SpecError."""
    if not isinstance(value, str) or not RUN_ID_RE.fullmatch(value):
        raise SpecError(f"{where}: {_shown(str(value))} is not an MLflow run id. Allowed: "
                        "letters, digits, '_' and '-' (MLflow writes 32 hex digits).")
    return value


def last_line(text: str) -> str:
    """The last non-empty line of an error text (a traceback's message)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def count_statuses(runs: Any) -> dict[str, int]:
    """How many runs are in each status (every known status present, zeros included)."""
    out = dict.fromkeys((s.value for s in STATUSES), 0)
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
    status: str = RunStatus.PENDING  # a RunStatus (a plain string when read back)
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
    look: int = 0  # 0: a search run; k: added by the sequential phase after look k

    def as_row(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key, "config": self.config, "optuna_trial": self.optuna_trial,
            "level": self.level, "seed": self.seed, "pair": self.pair, "look": self.look,
            "status": self.status,
            "epochs": self.epochs, **{f"param.{k}": v for k, v in self.params.items()},
            **self.metrics, "model_params": self.model_params, "macs": self.macs,
            "node": self.node, "device": self.device, "mlflow_run_id": self.mlflow_run_id,
        }

    @classmethod
    def from_run(cls, run: Mapping[str, Any]) -> RunRecord:
        """The record of a run the searcher planned (its identity and every knob), before
        it starts."""
        return cls(run_key=run["run_key"], config=run["config"],
                   optuna_trial=run["optuna_trial"], level=run["level"], seed=run["seed"],
                   pair=run["pair"], params={k: run[k] for k in KNOBS if k in run},
                   look=int(run.get("look") or 0))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunRecord:
        """The record of a row as :meth:`as_row` writes it (or as read back from MLflow)."""
        params = {k[len("param."):]: v for k, v in row.items() if k.startswith("param.")}
        metrics = {k: float(row[k]) for k in METRIC_KEYS
                   if isinstance(row.get(k), (int, float)) and not isinstance(row[k], bool)}
        return cls(run_key=row["run_key"], config=row["config"],
                   optuna_trial=row["optuna_trial"], level=row["level"], seed=row["seed"],
                   pair=row["pair"], params=params, status=row["status"],
                   epochs=int(row.get("epochs") or 0), metrics=metrics,
                   mlflow_run_id=row["mlflow_run_id"], look=int(row.get("look") or 0))


@dataclass
class ConfigRecord:
    index: int
    optuna_trial: int
    params: dict[str, Any]  # the searched knobs Optuna chose
    value: float | None  # the aggregate told to Optuna (mean metric over usable runs)
    runs: int
    usable_runs: int
    # the mean of every objective, in `metric:` order (a multi-objective study; else empty)
    objective_values: tuple[float, ...] = ()


@dataclass
class StudyResult:
    name: str
    execution: str
    status: str  # a StudyStatus: finished, failed, interrupted
    metric: str
    mode: str
    runs: list[RunRecord]
    configs: list[ConfigRecord]
    tracking_uri: str = field(repr=False)  # may hold a password: see study.redact
    experiment_id: str
    parent_run_id: str
    optuna_storage: str = field(repr=False)
    optuna_study: str
    wall_seconds: float
    verdict: str = ""  # the terminal verdict table ("" when no report was built)
    report_dir: str | None = None  # report.md, report.html, PNGs
    effects: list[Any] = field(default_factory=list)  # study.report.stats.Effect
    mlflow_dropped_writes: int = 0  # writes MLflow refused or never got (0: all stored)
    mlflow_dropped_runs: list[str] = field(default_factory=list)  # run keys they were for
    # (metric, mode) of every objective; more than one: a multi-objective study
    objectives: list[tuple[str, str]] = field(default_factory=list)
    runs_url: str = ""  # the MLflow UI's runs table of the experiment, answer columns shown

    @property
    def best(self) -> ConfigRecord | None:
        """The configuration with the best mean `metric`. In a multi-objective study: the
        best on the first objective among the Pareto-optimal ones (see :attr:`pareto`)."""
        pool = self.pareto if len(self.objectives) > 1 else self.configs
        scored = [c for c in pool if c.value is not None and math.isfinite(c.value)]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda c: c.value)  # type: ignore[arg-type, return-value]

    @property
    def pareto(self) -> list[ConfigRecord]:
        """The Pareto-optimal configurations of a multi-objective study (no other is at
        least as good on every objective and better on one), in configuration order; for
        a single-objective study the best configuration alone (none without a value)."""
        if len(self.objectives) <= 1:
            best = self.best
            return [best] if best is not None else []
        scored = [c for c in self.configs if len(c.objective_values) == len(self.objectives)
                  and all(math.isfinite(v) for v in c.objective_values)]
        keep = nondominated([c.objective_values for c in scored],
                            [mode for _, mode in self.objectives])
        return [scored[i] for i in keep]

    @property
    def best_config(self) -> dict[str, Any] | None:
        b = self.best
        return dict(b.params) if b else None

    def counts(self) -> dict[str, int]:
        return count_statuses(self.runs)

    def table(self) -> list[dict[str, Any]]:
        """One row per run: knobs as ``param.*``, final metrics, status, ids."""
        return [r.as_row() for r in self.runs]


@dataclass(frozen=True)
class Progress:
    """Where a running study stands: what ``run(..., on_progress=f)`` hands `f` (at most
    about once a second, and once more at the end with `finished` set)."""

    study: str
    runs_total: int  # planned runs of this execution
    runs_done: int  # ended: completed, diverged, failed or pruned
    runs_running: int
    runs_failed: int
    runs_diverged: int
    fraction: float  # of the planned work done (a running run counts its epochs), 0..1
    elapsed_s: float  # since the study's callback started
    eta_s: float | None  # seconds left at the measured speed; None until it is measured
    metric: str
    best_value: float | None  # best configuration so far (mean over its ended runs)
    best_config: int | None
    finished: bool = False  # the last event: no run is left to report


class ReportError(RuntimeError):
    """The runs ended and are stored, but the report could not be made; `result` holds
    them and `study report EXECUTION` rebuilds the report from the stores."""

    def __init__(self, result: StudyResult, cause: Exception) -> None:
        super().__init__(error_summary(cause))
        self.result = result


def error_summary(e: BaseException) -> str:
    """One line for a terminal or an MLflow tag: the error's type and last line, redacted."""
    return redact_text(f"{type(e).__name__}: {last_line(str(e))}")


# Pareto dominance over objective values, with each objective's mode (max or min)


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Is `a` at least as good as `b` on every objective and better on one?"""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    at_least = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    return at_least and any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))


def nondominated(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """The indices of the points no other point dominates, in order (ties all kept)."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i)]
