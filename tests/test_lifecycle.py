"""How a study starts its own Ray instance, and when the driver warms the report.

The local instance pre-starts only as many workers as the study runs trials at once and
reports no task events; the report's imports wait for a CPU that no trial uses. Real Ray
where Ray is involved.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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


def _ray_workers(pid: int) -> list[str]:
    import psutil

    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            argv = p.cmdline()
        except psutil.Error:
            continue
        # a Python worker names itself ray::IDLE (or ray::<task>) once it is up
        if (argv and argv[0].startswith("ray::") and "Agent" not in argv[0]) or \
                (len(argv) > 1 and argv[1].endswith("default_worker.py")):
            out.append(" ".join(argv))
    return out


_START = textwrap.dedent("""
    import os
    import time
    from study.tune import ray_adapter
    ray_adapter.init_ray(prestart={prestart}, spare_cpu={spare})
    import ray, psutil
    from tests.test_lifecycle import _ray_workers
    time.sleep(4)  # the raylet pre-starts its workers once the driver is connected
    workers = len(_ray_workers(psutil.Process().pid))
    ray.get([ray.remote(lambda: 1).remote() for _ in range(3)])
    time.sleep(1.5)  # Ray reports task events every second (when on: 4 events here)
    events = len(ray._private.state.state._get_all_task_events())
    leaked = any(k in os.environ
                 for k in [*ray_adapter.LOCAL_RAY_ENV, *ray_adapter.SPARE_CPU_RAY_ENV])
    nice = ray.get(ray.remote(lambda: os.nice(0)).remote())  # a worker's niceness
    print(workers, ray.cluster_resources()["CPU"], events, leaked, nice)
""")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="Ray pre-starts one worker per CPU")
@pytest.mark.parametrize("prestart", [1, None])
def test_local_instance_prestarts_per_slot_lean_and_unniced(prestart, workdir):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # one slot of one CPU leaves a CPU free here (test_slots_come_from_the_spec)
    start = _START.format(prestart=prestart, spare=prestart == 1)
    out = subprocess.run([sys.executable, "-c", start],
                         capture_output=True, text=True, timeout=120, env=env,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-3000:]
    workers, cpus, events, leaked, nice = out.stdout.split()
    # Ray's own choice is one per CPU; the study's slots when it says how many
    assert int(workers) == (1 if prestart == 1 else int(float(cpus)))
    # task events off (ray_adapter.LOCAL_RAY_ENV; Ray's default: 4 events here); workers at
    # the driver's priority when a CPU is left free (ray_adapter.SPARE_CPU_RAY_ENV), else at
    # Ray's nice 15; both set only while the instance started
    assert events == "0" and leaked == "False"
    assert int(nice) == (os.nice(0) if prestart == 1 else 15)


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
