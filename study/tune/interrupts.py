"""How the driver takes SIGINT (Ctrl-C) and SIGTERM (`kill`, `ray job stop`, a pod eviction).

Both mean "stop the study, keep what is done, let it be resumed". What that takes depends
on what the driver is doing, so the handling moves through phases:

- starting (``stop_now``): SIGTERM interrupts at once, like Ctrl-C (KeyboardInterrupt);
  installed before Ray starts, and Ray's own handlers are kept out (study.tune.runner).
- writing the stores (``hold``): a signal is remembered and acted on at the next safe
  point, so the MLflow parent run and Optuna's study are never left half-made; a second
  signal interrupts at once.
- running trials (``through_tune``): SIGTERM becomes SIGINT, which Tune's own handler
  turns into a graceful stop of the trials.

Python lets only the main thread set signal handlers: elsewhere (a study run from a
thread) every call here does nothing and the caller's handling stays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["held", "hold", "restore", "restored_on_error", "stop_now", "through_tune"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_saved: dict[int, Any] = {}  # the handlers before the study's, restored by restore()
_held: list[int] = []  # signals remembered while holding


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _install(handlers: dict[int, Callable[[int, Any], None] | Any]) -> None:
    if not _main_thread():
        return
    for signum, handler in handlers.items():
        if signum not in _saved:
            _saved[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _remember(signum: int, frame: Any) -> None:
    if _held:  # the second signal: the user means now
        raise KeyboardInterrupt(signal.Signals(signum).name)
    _held.append(signum)


def _to_sigint(signum: int, frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGINT)


def stop_now() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt where the main thread is."""
    _held.clear()
    _install({signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _interrupt})


def hold() -> None:
    """SIGINT and SIGTERM are remembered (see held()); a second one raises KeyboardInterrupt."""
    _install(dict.fromkeys(_SIGNALS, _remember))


def through_tune() -> None:
    """SIGINT as Python has it (Tune installs its own once trials start); SIGTERM sent on as
    SIGINT. A signal held before is dropped: the caller has checked held() first."""
    _held.clear()
    _install({signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _to_sigint})


def held() -> str | None:
    """The name of the first signal remembered while holding (e.g. "SIGTERM"), or None."""
    return signal.Signals(_held[0]).name if _held else None


def restore() -> None:
    """The handlers from before the study's first call here."""
    if _main_thread():
        for signum, handler in _saved.items():
            signal.signal(signum, handler)
    _saved.clear()
    _held.clear()


@contextlib.contextmanager
def restored_on_error() -> Iterator[None]:
    """The caller's handlers back if the block raises (a study run from Python that fails
    part-way must not leave a notebook's Ctrl-C held)."""
    try:
        yield
    except BaseException:
        restore()
        raise
