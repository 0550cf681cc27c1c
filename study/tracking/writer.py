"""MLflow layout for a study, written from the driver, in batches, off the hot path.

One experiment per study, one parent run per execution, one nested child run per training
run. :class:`MlflowWriter` queues every write and a background thread sends them in
batches (``log_batch``); a write that fails (server down) stays queued and is retried, so
nothing is lost while the process lives. A write MLflow refuses for good drops that run's
writes only, counted and reported by ``close()``. No Ray import here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from study import environ
from study.redact import redact_text, redact_uri, use_http_credentials

logger = logging.getLogger(__name__)

__all__ = ["MlflowWriter", "TrackingError", "check_tracking_uri",
           "reachable_tracking_uri"]

MAX_ENTITIES_PER_BATCH = 1000  # MLflow's log_batch limits: in all, and of each kind
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, bad URI)."""


@dataclass
class _Op:
    kind: str  # "create", "metrics", "tags", "end"
    key: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Batch:
    """One run's writes gathered from its queued ops, and the ops they cover."""

    metrics: list[Any] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # a key set twice: the later value
    covered: list[_Op] = field(default_factory=list)

    def add(self, op: _Op) -> None:
        from mlflow.entities import Metric, Param

        self.covered.append(op)
        if op.kind == "create":
            self.params += [Param(k, _str(v)) for k, v in op.payload["params"].items()]
        elif op.kind == "metrics":
            self.metrics += [Metric(k, float(v), op.payload["ts"], op.payload["step"])
                             for k, v in op.payload["metrics"].items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)]
        elif op.kind == "tags":
            self.tags.update((k, _str(v)) for k, v in op.payload["tags"].items())


def reachable_tracking_uri(given: str | None = None, timeout: float = 5.0) -> str:
    """The tracking URI `given` (else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db), with
    HTTP credentials moved into MLflow's variables, checked within about `timeout` s."""
    from study.spec import resolve_tracking_uri

    uri = use_http_credentials(resolve_tracking_uri(given))
    check_tracking_uri(uri, timeout)
    return uri


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when the tracking store cannot be reached.

    An ``http(s)://user:pw@host`` URI: the credentials go to MLflow's variables first
    (study.redact.use_http_credentials); messages name the URI redacted."""
    uri = use_http_credentials(uri)
    shown = redact_uri(uri)
    if uri.startswith(("http://", "https://")):
        import http.client
        import urllib.error
        import urllib.request

        try:  # MLflow's own client retries for minutes; ask the server's health page once
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                r.read(100)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            raise TrackingError(
                f"MLflow tracking server {shown!r} is unreachable "
                f"({redact_text(str(e))}). Start it (e.g. "
                "`mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000`) or set "
                "MLFLOW_TRACKING_URI / `storage.tracking` to a reachable server or an "
                "sqlite:/// path.") from None
    from mlflow.tracking import MlflowClient

    from study.tracking.stores import seed_mlflow_store

    seed_mlflow_store(uri)
    try:
        # the server answered its health page: one try, with time for a busy server
        with _quick_http(max(timeout, 30.0)) if uri.startswith(("http://", "https://")) \
                else contextlib.nullcontext():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # mlflow raises many types; all mean "unusable"
        first = redact_text(str(e).splitlines()[0]) if str(e) else ""
        hint = (" The server wants credentials: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or give them in the URI: "
                "http://user:password@host)." if "401" in first or "403" in first else "")
        raise TrackingError(
            f"MLflow tracking store {shown!r} is not usable: {type(e).__name__}: {first}."
            f"{hint} Set MLFLOW_TRACKING_URI or `storage.tracking` to a reachable server "
            "or an sqlite:/// path.") from None


@contextlib.contextmanager
def _quick_http(timeout: float) -> Iterator[None]:
    """MLflow's HTTP client without retries and with a `timeout` (s) for one call, unless
    the user set MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout)))}
    with environ.defaults(quick):
        yield


def _str(v: Any) -> str:
    s = v if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v)
    return s[:MAX_PARAM_CHARS]


class _Refused(Exception):
    """A write that has no MLflow run to go to (its run's creation was refused)."""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:500]


def _permanent(e: Exception) -> bool:
    """An MLflow error that retrying cannot fix (a bad name or value, not a lost server)."""
    code = getattr(e, "error_code", "")
    return code in ("INVALID_PARAMETER_VALUE", "INVALID_STATE", "RESOURCE_ALREADY_EXISTS")


class MlflowWriter:
    """Queue MLflow writes for a parent run and its children; send them from a thread."""

    def __init__(self, tracking_uri: str, experiment: str, *, parent_name: str,
                 parent_tags: Mapping[str, Any], parent_params: Mapping[str, Any],
                 parent_run_id: str | None = None, flush_seconds: float = 1.0,
                 experiment_tags: Mapping[str, str] | None = None) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        # This writer retries on its own, without blocking anyone; MLflow's HTTP client would
        # otherwise retry each call for minutes in its thread. A user's settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        # MLflow prints a link per ended run to stdout: the study prints its own summary.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.tracking_uri = redact_uri(tracking_uri)  # for messages; the client has it all
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment)
        for k, v in (experiment_tags or {}).items():  # also on an experiment made before
            if exp is None or exp.tags.get(k) != v:
                self.client.set_experiment_tag(self.experiment_id, k, v)
        if parent_run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=parent_name,
                                         tags={k: _str(v) for k, v in parent_tags.items()})
            self.parent_run_id = run.info.run_id
            params = [Param(k, _str(v)) for k, v in parent_params.items()]
            for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.parent_run_id,
                                      params=params[i: i + MAX_PARAMS_PER_BATCH])
        else:
            self.parent_run_id = parent_run_id
            self.client.log_batch(parent_run_id, tags=[RunTag(k, _str(v))
                                                        for k, v in parent_tags.items()])
        self.child_ids: dict[str, str] = {}
        self._ops: deque[_Op] = deque()
        self._lock = threading.RLock()  # re-entered by held()'s own writes
        self._wake = threading.Event()
        self._stop = False
        self._flush_seconds = flush_seconds
        self._failures = 0
        # Writes MLflow refused for good (a deleted run, a value it rejects), per run key
        # ("" is the parent): counted, never retried; later writes for that run go too.
        self.dropped_writes = 0
        self.dropped_runs: dict[str, str] = {}  # run key -> why MLflow refused it
        self._thread = threading.Thread(target=self._send_until_stopped, name="study-mlflow",
                                        daemon=True)
        self._thread.start()

    def set_experiment_tag(self, key: str, value: str) -> None:
        """Tag the study's experiment now (e.g. a saved runs-table view, at the end)."""
        self.client.set_experiment_tag(self.experiment_id, key, value)

    def log_parent_text(self, text: str, artifact_file: str) -> None:
        """Write a text artifact to the parent run now (before any run starts)."""
        self.client.log_text(self.parent_run_id, text, artifact_file)

    # ---- producer side (called from Tune callbacks; never blocks on I/O) ----

    def start_child(self, key: str, *, name: str, params: Mapping[str, Any],
                    tags: Mapping[str, Any]) -> None:
        self._put(_Op("create", key, {"name": name, "params": dict(params),
                                      "tags": dict(tags)}))

    def log_metrics(self, key: str, metrics: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        self._put(_Op("metrics", key, {"metrics": dict(metrics), "step": step, "ts": ts}))

    def set_tags(self, key: str, tags: Mapping[str, Any]) -> None:
        self._put(_Op("tags", key, {"tags": dict(tags)}))

    def end_child(self, key: str, status: str) -> None:
        """status: FINISHED, FAILED or KILLED. Sent at once: a run's end is what a resume
        after a killed driver relies on."""
        self._put(_Op("end", key, {"status": status}))
        self._wake.set()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Queue the writes made inside the block without sending any of them until it
        ends, so that they go to MLflow together, in one pass."""
        with self._lock:
            yield

    def _put(self, op: _Op) -> None:
        with self._lock:
            if op.key in self.dropped_runs:  # MLflow refused this run already
                self.dropped_writes += 1
            else:
                self._ops.append(op)

    # ---- consumer side ----

    def flush(self, timeout: float = 60.0) -> bool:
        """Send everything queued; True if the queue emptied within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._ops:
                    return True
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            self._wake.set()
            time.sleep(0.05)

    def pending(self) -> int:
        with self._lock:
            return len(self._ops)

    def close(self, status: str = "FINISHED", tags: Mapping[str, Any] | None = None,
              timeout: float | None = None,
              metrics: Mapping[str, float] | None = None) -> bool:
        """Flush, tag and end the parent run; True if every write reached MLflow.

        Waits up to `timeout` seconds (default $STUDY_MLFLOW_FLUSH_TIMEOUT or 600) for a
        tracking server that is down to come back. Writes MLflow refused, or left unsent,
        are counted in `dropped_writes` (their runs in `dropped_runs`) and named in the
        parent's tags ``study.mlflow_dropped_writes`` and ``study.mlflow_dropped_runs``.
        `metrics` go to the parent run (step 0) with `tags`."""
        from mlflow.exceptions import MlflowException

        if timeout is None:
            timeout = float(os.environ.get("STUDY_MLFLOW_FLUSH_TIMEOUT", "600"))
        if metrics:
            self.log_metrics("", metrics, step=0)
        if tags:
            self._put(_Op("tags", "", {"tags": dict(tags)}))
        if not self.flush(5.0):
            logger.warning("MLflow: %d writes queued for %s; waiting up to %.0f s for it",
                           self.pending(), self.tracking_uri, timeout)
        self.flush(timeout)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)
        with self._lock:
            unsent, self._ops = len(self._ops), deque()
        if unsent:
            logger.error("MLflow: %d writes could not be sent to %s", unsent,
                         self.tracking_uri)
        self.dropped_writes += unsent
        end = [("set_tags", self._tag_dropped)] if self.dropped_writes else []
        for what, call in [*end, ("end", lambda: self.client.set_terminated(
                self.parent_run_id, status))]:
            try:
                call()
            except MlflowException as e:  # counted: the caller reports it
                logger.error("MLflow: could not %s the parent run %s: %s", what.replace(
                    "_", " "), self.parent_run_id, _first_line(e))
                self.dropped_writes += 1
                self.dropped_runs.setdefault("", _first_line(e))
        return self.dropped_writes == 0

    def _tag_dropped(self) -> None:
        from mlflow.entities import RunTag

        runs = ", ".join(k or "(parent run)" for k in self.dropped_runs) or "(none refused)"
        self.client.log_batch(self.parent_run_id, tags=[
            RunTag("study.mlflow_dropped_writes", str(self.dropped_writes)),
            RunTag("study.mlflow_dropped_runs", _str(runs))])

    def _send_until_stopped(self) -> None:
        from mlflow.exceptions import MlflowException

        while not self._stop:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            try:
                self._drain()
                self._failures = 0
            except (MlflowException, OSError) as e:  # e.g. the server is down: retried
                self._failures += 1
                if self._failures in (1, 10) or self._failures % 100 == 0:
                    logger.warning("MLflow write failed (%s: %s); kept queued, retrying",
                                   type(e).__name__, _first_line(e))
                time.sleep(min(30.0, 0.5 * 2 ** min(self._failures, 6)))

    def _drain(self) -> None:
        """Send what is queued, run by run: a run's queued params, metrics and tags go in
        one log_batch (MLflow's limits permitting), its end after them. Each op leaves the
        queue once MLflow has taken it."""
        with self._lock:
            queued = list(self._ops)
        from mlflow.exceptions import MlflowException

        by_run: dict[str, list[_Op]] = {}
        for op in queued:
            by_run.setdefault(op.key, []).append(op)
        for key, ops in by_run.items():
            try:
                self._send_run(key, ops)
            except _Refused as e:
                self._drop_run(key, str(e))
            except MlflowException as e:
                if not _permanent(e):
                    raise  # retried (_send_until_stopped)
                self._drop_run(key, f"{type(e).__name__}: {_first_line(e)}")

    def _drop_run(self, key: str, why: str) -> None:
        """MLflow refused a write of run `key` for good: drop its queued writes and every
        later one (counted), and go on with the other runs."""
        with self._lock:
            mine = [op for op in self._ops if op.key == key]
            self._ops = deque(op for op in self._ops if op.key != key)
            self.dropped_writes += len(mine)
            self.dropped_runs[key] = why
        logger.error("MLflow refused a write for %s (%s); its %d queued writes and any "
                     "later ones are dropped", f"run {key!r}" if key else "the parent run",
                     why, len(mine))

    def _send_run(self, key: str, ops: list[_Op]) -> None:
        """Send one run's queued ops: its writes in batches, its end after them."""
        from mlflow.entities import RunStatus

        batch = _Batch()
        for op in ops:
            if op.kind == "end":  # after everything before it has been sent
                self._send_batch(key, ops[0].kind, batch)
                self.client.set_terminated(self._run_id(key, ops[0].kind), RunStatus.to_string(
                    RunStatus.from_string(op.payload["status"])))
                self._done([op])
                continue
            if op.kind == "create" and key not in self.child_ids:
                run_tags = {"mlflow.parentRunId": self.parent_run_id, **op.payload["tags"]}
                run = self.client.create_run(self.experiment_id, run_name=op.payload["name"],
                                             tags={k: _str(v) for k, v in run_tags.items()})
                self.child_ids[key] = run.info.run_id
            batch.add(op)
        self._send_batch(key, ops[0].kind, batch)

    def _run_id(self, key: str, kind: str) -> str:
        rid = self.child_ids.get(key) if key else self.parent_run_id
        if rid is None:
            raise _Refused(f"{kind} for a run that has no MLflow run")
        return rid

    def _send_batch(self, key: str, kind: str, batch: _Batch) -> None:
        """log_batch calls within MLflow's limits; then the ops they covered leave the queue."""
        from mlflow.entities import RunTag

        metrics, params = batch.metrics, batch.params
        tags = [RunTag(k, v) for k, v in batch.tags.items()]
        while metrics or params or tags:
            p, t = params[:MAX_PARAMS_PER_BATCH], tags[:MAX_TAGS_PER_BATCH]
            m = metrics[:MAX_ENTITIES_PER_BATCH - len(p) - len(t)]
            self.client.log_batch(self._run_id(key, kind), metrics=m, params=p, tags=t)
            del metrics[:len(m)], params[:len(p)], tags[:len(t)]
        batch.tags.clear()
        self._done(batch.covered)
        batch.covered.clear()

    def _done(self, ops: list[_Op]) -> None:
        sent = {id(op) for op in ops}
        with self._lock:
            self._ops = deque(op for op in self._ops if id(op) not in sent)
