"""The live progress of a running study: the line it prints, with the time left at the
measured speed, its lines about retried and failed runs, and the :class:`Progress` events a
caller's ``on_progress`` function receives (a notebook's progress bar, say), and the
sequential phase's looks as they happen.

``[name] 3/8 runs done (2 running, 0 failed, 0 diverged) | best ... | 12 s, ~30 s left``
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from study.records import ENDED, USABLE, Progress, RunRecord, RunStatus, count_statuses, last_line
from study.redact import redact_spec
from study.report.stats import finite_mean, finite_values
from study.spec import StudySpec

logger = logging.getLogger(__name__)

__all__ = ["Echo", "EtaEstimator", "OnProgress", "ProgressPrinter", "best_of",
           "format_seconds", "work_done"]

Echo = Callable[[str], None]
OnProgress = Callable[[Progress], None]


class EtaEstimator:
    """Seconds left from the measured speed: work done (in runs) per second over the last
    `window` seconds of samples. Start-up before the first work is never counted, since the
    speed is measured from the first sample on. Pure: time comes from the caller."""

    def __init__(self, window: float = 120.0, min_span: float = 2.0) -> None:
        self.window = window  # seconds of samples the speed is measured over
        self.min_span = min_span  # seconds of samples needed before any estimate
        self.samples: deque[tuple[float, float]] = deque()  # (time, work done)

    def observe(self, now: float, done: float) -> None:
        """Record that `done` units of work were done at time `now` (seconds)."""
        if self.samples and done < self.samples[-1][1]:
            self.samples.clear()  # less done than before (not expected): measure afresh
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Work per second, or None while too little has been seen."""
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        if t1 - t0 < self.min_span or d1 <= d0:
            return None
        return (d1 - d0) / (t1 - t0)

    def seconds_left(self, now: float, total: float) -> float | None:
        """Time until `total` units are done at the measured speed, from `now`."""
        speed = self.rate()
        if speed is None:
            return None
        t_last, done = self.samples[-1]
        return max(0.0, (total - done) / speed - (now - t_last))


def work_done(records: Iterable[RunRecord], default_epochs: int | None) -> float:
    """Runs done, a running run counted by the share of its epochs it trained."""
    done = 0.0
    for r in records:
        if r.status in ENDED:
            done += 1.0
        elif r.status == RunStatus.RUNNING and r.epochs:
            planned = r.params.get("epochs") or default_epochs
            done += min(1.0, r.epochs / planned) if planned else 0.0
    return done


def format_seconds(s: float) -> str:
    """12 s, 4 min 05 s, 2 h 03 min."""
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressPrinter:
    """Prints through `echo` (None: prints nothing): the progress line at most every
    `every` seconds, and a line for each run retried or failed; hands `on_progress` a
    :class:`Progress` at most every `event_every` seconds and at the end."""

    def __init__(self, spec: StudySpec, echo: Echo | None, every: float = 5.0,
                 on_progress: OnProgress | None = None, event_every: float = 1.0) -> None:
        self.spec = spec
        self.echo = echo
        self.on_progress = on_progress
        self.every = every  # seconds between two progress lines
        self.event_every = event_every  # seconds between two progress events
        self.started = time.monotonic()
        self.eta = EtaEstimator()
        self._last_print = 0.0
        self._last_event = 0.0
        self._last_line = ""
        self.planned = spec.total_runs  # grows as the sequential phase adds runs

    def __getstate__(self) -> dict[str, object]:
        # pickled with the Tune callback: the echo and on_progress functions stay behind and
        # the spec goes without its secrets
        return {**self.__dict__, "echo": None, "on_progress": None,
                "spec": redact_spec(self.spec)}

    @property
    def on(self) -> bool:
        return self.echo is not None

    def update(self, records: Iterable[RunRecord], force: bool = False,
               final: bool = False) -> None:
        """Print the progress line if `every` seconds have passed since the last one (with
        `force`, now, unless it would repeat the last line) and send an event likewise;
        `final`: the study's last update."""
        now = time.monotonic()
        line_due = self.echo is not None and (force or now - self._last_print >= self.every)
        event_due = self.on_progress is not None and (
            force or final or now - self._last_event >= self.event_every)
        if not (line_due or event_due):
            return
        p = self.snapshot(list(records), now, final)
        if event_due:
            self._last_event = now
            self._send(p)
        if line_due:
            self._last_print = now
            self._print(p, force)

    def snapshot(self, records: list[RunRecord], now: float, final: bool = False,
                 ) -> Progress:
        """Where the study stands at `now` (time.monotonic), the speed sample included."""
        c = count_statuses(records)
        total = self.planned
        done = work_done(records, self.spec.fixed.get("epochs"))
        self.eta.observe(now, done)
        best = best_of(records, self.spec)
        return Progress(
            study=self.spec.name, runs_total=total, runs_done=sum(c[k] for k in ENDED),
            runs_running=c[RunStatus.RUNNING], runs_failed=c[RunStatus.FAILED],
            runs_diverged=c[RunStatus.DIVERGED],
            fraction=min(1.0, done / total) if total else 1.0,
            elapsed_s=now - self.started,
            eta_s=0.0 if final else self.eta.seconds_left(now, total),
            metric=self.spec.metric, best_value=best[1] if best else None,
            best_config=best[0] if best else None, finished=final)

    def _print(self, p: Progress, force: bool) -> None:
        best = f" | best {p.metric} {p.best_value:.4f} (config {p.best_config})" \
            if p.best_value is not None else ""
        line = (f"[{p.study}] {p.runs_done}/{p.runs_total} runs done "
                f"({p.runs_running} running, {p.runs_failed} failed, "
                f"{p.runs_diverged} diverged){best}")
        if force and line == self._last_line:
            return
        self._last_line = line
        left = f", ~{format_seconds(p.eta_s)} left" \
            if p.eta_s is not None and not p.finished else ""
        self.echo(f"{line} | {format_seconds(p.elapsed_s)}{left}")  # type: ignore[misc]

    def _send(self, p: Progress) -> None:
        try:
            self.on_progress(p)  # type: ignore[misc]
        except Exception:  # the caller's function: reported, and the study goes on
            logger.exception("on_progress raised; it is not called again in this study")
            self.on_progress = None

    def look(self, lines: Iterable[str], planned: int) -> None:
        """A look of the sequential phase (n, interval, boundary, decision per comparison,
        then the pairs it adds); `planned`: the runs planned now."""
        self.planned = planned
        if self.echo is not None:
            for line in lines:
                self.echo(f"[{self.spec.name}] {line}")

    def retrying(self, key: str, attempt: int, error: str) -> None:
        if self.echo is not None:
            self.echo(f"  run {key} failed on attempt {attempt}; retrying "
                      f"({last_line(error)})")

    def failed(self, rec: RunRecord, attempts: int | None) -> None:
        if self.echo is not None:
            tries = f" after {attempts} attempt(s)" if attempts else ""
            self.echo(f"  run {rec.run_key} FAILED{tries}: {last_line(rec.error)}")


def best_of(records: Iterable[RunRecord], spec: StudySpec) -> tuple[int, float] | None:
    """(config, mean METRIC) of the best configuration whose every run has ended with a
    finite value, or None while there is none."""
    by_cfg: dict[int, list[float | None]] = {}
    for r in records:
        if r.look:  # added by the sequential phase: not part of the value Optuna hears
            continue
        by_cfg.setdefault(r.config, []).append(
            r.metrics.get(spec.metric) if r.status in USABLE else None)
    full = {k: finite_mean(vs) for k, vs in by_cfg.items()
            if len(vs) == spec.runs_per_config and len(finite_values(vs)) == len(vs)}
    if not full:
        return None
    pick = max if spec.mode == "max" else min
    k = pick(full, key=lambda i: full[i])  # type: ignore[arg-type, return-value]
    return k, full[k]  # type: ignore[return-value]
