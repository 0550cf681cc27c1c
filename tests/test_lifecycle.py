"""How a study starts its own Ray instance, and when the driver warms the report.

The local instance pre-starts only as many workers as the study runs trials at once and
reports no task events; the report's imports wait for a CPU that no trial uses. Real Ray
where Ray is involved.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from study.spec import parse_spec
from study.tune import runner, warmup
from study.tune.warmup import ReportWarmup
from tests.conftest import tiny_spec


def test_slots_come_from_the_spec():
    def spec(**over):
        return parse_spec(tiny_spec(**over))

    assert runner.slots(spec(execution={"concurrency": 1})) == 1
    cpus = os.cpu_count() or 1
    assert runner.slots(spec(resources={"cpu": 1})) == cpus
    assert runner.slots(spec(resources={"cpu": 0.5})) == int(cpus / 0.5)
    assert runner.slots(spec(resources={"cpu": 1, "gpu": 1})) is None  # known once Ray is up
    # once Ray is up: the cluster's resources (as block_plan uses them)
    assert runner.slots(spec(resources={"cpu": 1, "gpu": 1}), {"CPU": 8.0, "GPU": 2.0}) == 2
    assert runner.slots(spec(resources={"cpu": 2}), {"CPU": 8.0, "GPU": 0.0}) == 4
    assert runner.slots(spec(execution={"concurrency": 3}), {"CPU": 8.0, "GPU": 0.0}) == 3
    # a CPU left free (ray_adapter.SPARE_CPU_RAY_ENV): slots x CPUs per run below the
    # machine's CPUs
    one = {"execution": {"concurrency": 1}}
    assert runner.spare_cpu(spec(**one, resources={"cpu": 1})) == (cpus > 1)
    assert not runner.spare_cpu(spec(**one, resources={"cpu": cpus}))
    assert not runner.spare_cpu(spec(resources={"cpu": 1}))  # every CPU a slot
    assert not runner.spare_cpu(spec(resources={"cpu": 0.5}))
    assert not runner.spare_cpu(spec(resources={"cpu": 1, "gpu": 1}))  # GPU: Ray's default


def _trials(*statuses: str) -> list:
    return [SimpleNamespace(status=s) for s in statuses]


@pytest.fixture
def warmed(monkeypatch):
    started: list[float] = []
    clock = {"now": 100.0}
    monkeypatch.setattr(warmup.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(warmup, "import_report_modules", lambda: started.append(clock["now"]))

    def advance(seconds: float) -> None:
        clock["now"] += seconds

    return started, advance


def _join_warm_threads() -> None:
    import threading

    for t in threading.enumerate():
        if t.name == "study-report-imports":
            t.join(5)


def test_report_imports_wait_for_a_free_cpu_when_every_cpu_is_a_slot(warmed):
    started, advance = warmed
    w = ReportWarmup(cpu_per_trial=1.0, cpus=2)
    w.maybe_start(_trials("RUNNING", "PENDING"))
    assert not w.started  # nothing has completed yet
    w.trial_completed()
    for _ in range(5):  # both CPUs train
        w.maybe_start(_trials("TERMINATED", "RUNNING", "RUNNING"))
        advance(1.0)
    assert not w.started
    w.maybe_start(_trials("TERMINATED", "TERMINATED", "RUNNING"))  # between two trials
    advance(0.2)
    w.maybe_start(_trials("TERMINATED", "TERMINATED", "RUNNING", "RUNNING"))
    advance(1.0)
    assert not w.started  # a short gap does not count
    w.maybe_start(_trials("TERMINATED", "TERMINATED", "TERMINATED", "RUNNING"))
    advance(0.6)
    w.maybe_start(_trials("TERMINATED", "TERMINATED", "TERMINATED", "RUNNING"))
    assert w.started  # a slot has had no trial for 0.6 s: the end of the study
    _join_warm_threads()
    assert len(started) == 1


def test_report_imports_start_early_when_a_cpu_has_no_slot(warmed):
    started, advance = warmed
    w = ReportWarmup(cpu_per_trial=1.0, cpus=2)  # one trial at a time on 2 CPUs
    w.trial_completed()
    w.maybe_start(_trials("TERMINATED", "RUNNING"))
    advance(0.5)
    w.maybe_start(_trials("TERMINATED", "RUNNING"))
    assert w.started
    w.maybe_start(_trials("TERMINATED", "RUNNING"))  # once only
    _join_warm_threads()
    assert len(started) == 1
