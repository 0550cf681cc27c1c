"""The live progress line a running study prints, its lines about retried and failed
runs: ``[name] 3/8 runs done (2 running, 0 failed, 0 diverged) | best ... | 12 s``, and the
sequential phase's looks as they happen."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from study.records import ENDED, USABLE, RunRecord, RunStatus, count_statuses, last_line
from study.redact import redact_spec
from study.report.stats import finite_mean, finite_values
from study.spec import StudySpec

__all__ = ["Echo", "ProgressPrinter", "best_so_far"]

Echo = Callable[[str], None]


class ProgressPrinter:
    """Prints through `echo` (None: prints nothing): the progress line at most every
    `every` seconds, and a line for each run retried or failed."""

    def __init__(self, spec: StudySpec, echo: Echo | None, every: float = 5.0) -> None:
        self.spec = spec
        self.echo = echo
        self.every = every  # seconds between two progress lines
        self.started = time.monotonic()
        self._last_print = 0.0
        self._last_line = ""
        self.planned = spec.total_runs  # grows as the sequential phase adds runs

    def __getstate__(self) -> dict[str, object]:
        # pickled with the Tune callback: the echo function stays behind and the spec goes
        # without its secrets
        return {**self.__dict__, "echo": None, "spec": redact_spec(self.spec)}

    @property
    def on(self) -> bool:
        return self.echo is not None

    def update(self, records: Iterable[RunRecord], force: bool = False) -> None:
        """Print the progress line if `every` seconds have passed since the last one; with
        `force`, now, unless it would repeat the last line."""
        if self.echo is None:
            return
        now = time.monotonic()
        if not force and now - self._last_print < self.every:
            return
        self._last_print = now
        records = list(records)
        c = count_statuses(records)
        done = sum(c[k] for k in ENDED)
        line = (f"[{self.spec.name}] {done}/{self.planned} runs done "
                f"({c[RunStatus.RUNNING]} running, {c[RunStatus.FAILED]} failed, "
                f"{c[RunStatus.DIVERGED]} diverged){best_so_far(records, self.spec)}")
        if force and line == self._last_line:
            return
        self._last_line = line
        self.echo(f"{line} | {now - self.started:.0f} s")

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


def best_so_far(records: Iterable[RunRecord], spec: StudySpec) -> str:
    """`` | best METRIC VALUE (config N)`` over the configurations whose every search run has
    ended with a finite value (their mean, as Optuna hears it), or "" while there is none."""
    by_cfg: dict[int, list[float | None]] = {}
    for r in records:
        if r.look:  # added by the sequential phase: not part of the value Optuna hears
            continue
        by_cfg.setdefault(r.config, []).append(
            r.metrics.get(spec.metric) if r.status in USABLE else None)
    full = {k: finite_mean(vs) for k, vs in by_cfg.items()
            if len(vs) == spec.runs_per_config and len(finite_values(vs)) == len(vs)}
    if not full:
        return ""
    pick = max if spec.mode == "max" else min
    k = pick(full, key=lambda i: full[i])  # type: ignore[arg-type, return-value]
    return f" | best {spec.metric} {full[k]:.4f} (config {k})"
