"""Import what the report needs while runs train, on a CPU no trial uses, so the report
follows the last run at once without slowing any run down."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["ReportWarmup", "import_report_modules"]


class ReportWarmup:
    """Starts :func:`import_report_modules` once, in a thread, when a CPU is free.

    Not before the first trial has completed (Tune is in its steady state by then: nothing
    else imports in the driver), and only once a whole CPU has been free of trials for
    `idle_seconds`: at once when the study runs fewer trials at a time than there are CPUs;
    at the end, when a slot has no trial left to run, when every CPU is a slot (the short
    gap between two trials does not count). Importing while every CPU runs a trial would
    slow those trials down."""

    def __init__(self, cpu_per_trial: float, cpus: float, idle_seconds: float = 0.5) -> None:
        self.cpu_per_trial = cpu_per_trial
        self.cpus = cpus  # the cluster's CPUs (0: unknown: start after the first trial)
        self.idle_seconds = idle_seconds
        self.completed = 0  # trials completed so far
        self.started = False  # the imports have been started
        self._idle_since: float | None = None

    def trial_completed(self) -> None:
        self.completed += 1

    def maybe_start(self, trials: Sequence[Any]) -> None:
        """Start the imports if the conditions above hold for `trials` (Tune's trials)."""
        if self.started or not self.completed:
            return
        busy = sum(self.cpu_per_trial for t in trials if t.status == "RUNNING")
        now = time.monotonic()
        if self.cpus and self.cpus - busy < 1.0:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since >= self.idle_seconds or not self.cpus:
            self.started = True
            threading.Thread(target=import_report_modules, daemon=True,
                             name="study-report-imports").start()


def import_report_modules() -> None:
    """Import what the report needs (matplotlib; scikit-learn for Optuna's fANOVA). A module
    that cannot be imported is left to the report, which says so."""
    with contextlib.suppress(ImportError, OSError):
        import optuna.importance  # noqa: F401

        from study.report.figures import pyplot

        pyplot()
