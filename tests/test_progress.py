"""Progress that plans: the time-left estimate (on its own, with a made-up clock), the live
line that shows it, and the progress events of a tiny real study."""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import pytest
import yaml

import study
from study.records import Progress, RunRecord, RunStatus
from study.tune import progress as progress_mod
from study.tune.progress import EtaEstimator, ProgressPrinter, format_seconds, work_done
from tests.conftest import tiny_spec


def test_eta_is_the_remaining_work_at_the_measured_speed():
    eta = EtaEstimator(window=1000.0, min_span=2.0)
    assert eta.seconds_left(0.0, 10) is None  # nothing measured yet
    eta.observe(100.0, 0.0)  # start-up (100 s) before the first sample is never counted
    eta.observe(101.0, 0.5)
    assert eta.seconds_left(101.0, 10) is None  # under min_span: no estimate yet
    eta.observe(104.0, 2.0)  # 2 runs in 4 s: 0.5 runs/s, 8 runs left
    assert eta.rate() == pytest.approx(0.5)
    assert eta.seconds_left(104.0, 10) == pytest.approx(16.0)
    assert eta.seconds_left(110.0, 10) == pytest.approx(10.0)  # time since the last sample
    assert eta.seconds_left(200.0, 10) == 0.0  # overdue: never negative


@pytest.mark.parametrize("done", [[0, 0, 0], [3, 3, 3]])
def test_eta_is_unknown_while_nothing_moves(done):
    eta = EtaEstimator(min_span=1.0)
    for t, d in zip((0.0, 5.0, 10.0), done, strict=True):
        eta.observe(t, d)
    assert eta.rate() is None and eta.seconds_left(10.0, 10) is None


def test_eta_follows_a_change_of_speed_within_its_window():
    eta = EtaEstimator(window=10.0, min_span=1.0)
    for t in range(0, 21):  # 1 run/s for 20 s
        eta.observe(float(t), float(t))
    for t in range(21, 41):  # then 0.25 run/s (slower configurations)
        eta.observe(float(t), 20.0 + 0.25 * (t - 20))
    assert eta.rate() == pytest.approx(0.25, rel=0.05)
    assert eta.seconds_left(40.0, 35) == pytest.approx(10 / 0.25, rel=0.05)


def record(key: str, status: str, epochs: int, planned: int | None = None) -> RunRecord:
    params = {"epochs": planned} if planned else {}
    return RunRecord(run_key=key, config=0, optuna_trial=0, level=None, seed=0, pair=key,
                     params=params, status=status, epochs=epochs)


def test_work_done_counts_ended_runs_and_the_epochs_of_running_ones():
    recs = [record("a", RunStatus.COMPLETED, 4), record("b", RunStatus.FAILED, 0),
            record("c", RunStatus.PRUNED, 1), record("d", RunStatus.RUNNING, 1, planned=4),
            record("e", RunStatus.RUNNING, 3), record("f", RunStatus.PENDING, 0)]
    assert work_done(recs, default_epochs=6) == pytest.approx(3 + 0.25 + 0.5)


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (59, "59 s"), (65, "1 min 05 s"),
                                              (7385, "2 h 03 min")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def spec_of(tmp_path: Path, **over) -> study.StudySpec:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(**over)))
    return study.load_spec(path)


def test_live_line_shows_the_time_left(tmp_path, monkeypatch):
    spec = spec_of(tmp_path)  # 2 configurations x 2 levels x 1 seed, 2 epochs each
    clock = [1000.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    lines: list[str] = []
    printer = ProgressPrinter(spec, lines.append, every=0.0)
    recs = [record(f"r{i}", RunStatus.PENDING, 0) for i in range(4)]
    printer.update(recs)
    clock[0] += 10.0  # one run of four ended in 10 s: 30 s left
    recs[0].status, recs[0].epochs = RunStatus.COMPLETED, 2
    printer.update(recs)
    assert lines[-1].endswith("1/4 runs done (0 running, 0 failed, 0 diverged) | 10 s, "
                              "~30 s left")
    assert "left" not in lines[0]  # no speed measured yet


def test_a_failing_progress_function_is_reported_once_and_the_study_goes_on(tmp_path,
                                                                             caplog):
    calls: list[Progress] = []

    def bad(p: Progress) -> None:
        calls.append(p)
        raise ValueError("bar broke")

    printer = ProgressPrinter(spec_of(tmp_path), None, on_progress=bad, event_every=0.0)
    with caplog.at_level(logging.ERROR, logger="study.tune.progress"):
        printer.update([], force=True)
        printer.update([], force=True)
    assert len(calls) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "on_progress raised; it is not called again in this study"]
    assert "bar broke" in caplog.text


def test_the_printer_pickles_without_the_callers_functions(tmp_path):
    """Tune pickles its callbacks: a notebook's closure must stay behind, not break it."""
    import pickle

    lock = threading.Lock()  # unpicklable, like many closures' contents
    printer = ProgressPrinter(spec_of(tmp_path), lambda line: lock,
                              on_progress=lambda p: lock)
    back = pickle.loads(pickle.dumps(printer))
    assert back.echo is None and back.on_progress is None
    assert back.spec.name == "tiny"


@pytest.mark.slow
def test_a_real_study_sends_progress_events_up_to_the_end(answered_study):
    result, _, events = answered_study
    assert events and all(isinstance(e, Progress) for e in events)
    last = events[-1]
    assert last.finished and last.fraction == 1.0 and last.eta_s == 0.0
    assert last.runs_done == last.runs_total == len(result.runs) == 8
    assert (last.best_config, last.best_value) == (result.best.index, result.best.value)
    assert not any(e.finished for e in events[:-1])
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions)  # never goes back
    assert any(e.runs_done < e.runs_total for e in events)  # events came while it ran
    assert all(math.isfinite(e.elapsed_s) for e in events)
