"""What study.tune.ray_adapter changes in Ray and Tune is still there, with the shape it uses, in
the installed Ray; and a change that can no longer apply says so (an error where the study's
correctness or secrets depend on it, a WARNING where only speed does).

Mostly no Ray start: attribute, signature, source and binary checks (a fresh process where
Tune's state matters); one test starts a local instance in a subprocess to see the lean
start-up at work (its probe uses Ray's private task-event state, so it lives here). The
lifecycle and end-to-end tests start Ray with these changes.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray

from study.tune import ray_adapter
from study.tune.ray_adapter import RayChanged

RAY_DIR = Path(ray.__file__).parent


def _source(module: str) -> str:
    """The source text of one of Ray's modules (its parents get imported, not it)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"Ray {ray.__version__} has no module {module}"
    return Path(spec.origin).read_text()


@functools.cache
def _binary(relative: str) -> bytes:
    """One of Ray's compiled files: `_raylet.so` (the core worker in each Ray process),
    `core/src/ray/raylet/raylet` (the raylet)."""
    return (RAY_DIR / relative).read_bytes()


def _call_names(source: str, fn: str) -> list[str]:
    """How `source` calls `fn`: the dotted name before each `fn(`."""
    return re.findall(rf"([\w.]*\b{fn})\(", source)


# -- start-up ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ray_adapter.INIT_IMPORTS)
def test_init_imports_exist(name):
    importlib.import_module(name)


def test_prestart_option_is_lowered_never_raised():
    fewer = ray_adapter.fewer_prestarted
    assert fewer("--num_prestart_python_workers=8", 1) == "--num_prestart_python_workers=1"
    assert fewer("--num_prestart_python_workers=2", 4) == "--num_prestart_python_workers=2"
    assert fewer("--num_prestart_python_workers=2", 0) == "--num_prestart_python_workers=1"
    assert fewer("--node_manager_port=0", 1) == "--node_manager_port=0"
    assert fewer("--num_prestart_python_workers=x", 1) == "--num_prestart_python_workers=x"


def test_lean_instance_patches_exist():
    from ray._private import services
    from ray._private.node import Node

    params = inspect.signature(Node.start_api_server).parameters
    assert params["include_dashboard"].kind is inspect.Parameter.KEYWORD_ONLY
    for name in ("start_monitor", "start_log_monitor"):
        assert list(inspect.signature(getattr(Node, name)).parameters) == ["self"], name
    node = _source("ray._private.node")
    # called as methods (the patch replaces them on the class), the dashboard by keyword
    assert re.search(r"self\.start_api_server\(\s*include_dashboard=", node)
    assert "self.start_monitor()" in node and "self.start_log_monitor()" in node
    # the raylet is started through the module's start_ray_process, which the patch replaces
    assert list(inspect.signature(services.start_ray_process).parameters)[0] == "command"
    raylet = inspect.getsource(services.start_raylet)
    assert ray_adapter.PRESTART_OPTION in raylet
    assert "start_ray_process" in _call_names(raylet, "start_ray_process")
    assert ray_adapter.PRESTART_OPTION.strip("-=").encode() in \
        _binary("core/src/ray/raylet/raylet")


@pytest.mark.parametrize("setting, binary", [
    *[(name.removeprefix("RAY_"), "_raylet.so") for name in ray_adapter.LOCAL_RAY_ENV],
    *[(name.removeprefix("RAY_"), "core/src/ray/raylet/raylet")
      for name in ray_adapter.SPARE_CPU_RAY_ENV],
    ("preload_python_modules", "core/src/ray/raylet/raylet"),
])
def test_local_settings_are_read_by_ray(setting, binary):
    """Ray ignores a RAY_<setting> variable it no longer reads: only this test notices."""
    assert setting.encode() in _binary(binary), f"Ray {ray.__version__}: {setting}"


def test_worker_settings_are_named_as_ray_names_them():
    from ray._private import ray_constants

    assert ray_constants.RAY_WORKER_NICENESS in ray_adapter.SPARE_CPU_RAY_ENV
    # a worker imports the modules the raylet passes it (preload_python_modules)
    assert "--worker-preload-modules" in _source("ray._private.workers.default_worker")


# -- Tune's output and Ray's messages -------------------------------------------------


@pytest.mark.parametrize("name, module", [
    ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "ray.tune.utils.callback"),
    ("RAY_AIR_NEW_OUTPUT", "ray.tune.experimental.output"),
])
def test_tune_reads_the_settings_study_gives_it(name, module):
    assert name in ray_adapter.TUNE_ENV
    assert re.search(rf"os\.environ\.get\(\s*\"{name}\"", _source(module)), (name, module)


def test_tune_result_grid_warns_through_the_logger_study_quiets():
    source = _source(ray_adapter.TUNE_ANALYSIS_LOGGER)
    assert "logging.getLogger(__name__)" in source
    assert "Failed to fetch metrics" in source


@pytest.mark.parametrize("name, prefix", [
    (name, prefix) for name, prefixes in ray_adapter.QUIET_RAY_MESSAGES.items()
    for prefix in prefixes])
def test_quiet_messages_are_what_ray_logs(name, prefix):
    source = _source(name)
    assert "logging.getLogger(__name__)" in source
    assert prefix in source, f"Ray {ray.__version__}'s {name} no longer logs {prefix!r}"


# -- signals and stop -------------------------------------------------------------------


def test_signal_patches_exist():
    from ray._private import node, ray_constants, utils, worker

    assert list(inspect.signature(utils.set_sigterm_handler).parameters) == \
        ["sigterm_handler"]
    for module in (worker, node):  # looked up on the module at each call: the patch applies
        source = inspect.getsource(module)
        assert set(_call_names(source, "set_sigterm_handler")) == \
            {"ray._private.utils.set_sigterm_handler"}, module.__name__
    assert isinstance(ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER, bool)
    # the driver's core worker reads it (as ray_constants' attribute) when it connects
    assert b"RAY_DISABLE_FAILURE_SIGNAL_HANDLER" in _binary("_raylet.so")


def test_shutdown_internals_exist():
    from ray._private import worker
    from ray._private.node import Node

    assert hasattr(worker, "_global_node")
    assert "check_alive" in inspect.signature(Node.kill_monitor).parameters
    assert "self.head = " in inspect.getsource(Node.__init__)


# -- Tune's trial actors ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_tune():
    """Tune's runtime env for trial actors in a fresh process (before study changes it)."""
    code = ("import json; from ray.tune.execution import class_cache as c; "
            "print(json.dumps({'default': c.DEFAULT_ENV_VARS, "
            "'propagate_type': type(c.ENV_VARS_TO_PROPAGATE).__name__, "
            "'propagate': sorted(c.ENV_VARS_TO_PROPAGATE)}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_tune_actor_env_is_what_study_changes(fresh_tune):
    """plain_worker_actors drops PL_DISABLE_FORK: then Tune's actors have no env of their
    own, and start in the pre-started workers."""
    assert fresh_tune["default"] == {"PL_DISABLE_FORK": "1"}
    # Tune reads both at each trial actor it makes: changing them in place applies
    source = _source("ray.tune.execution.class_cache")
    assert "DEFAULT_ENV_VARS.copy()" in source and "in ENV_VARS_TO_PROPAGATE" in source


def test_tune_still_copies_credentials_where_the_runner_takes_them_out(fresh_tune):
    """The runner holds credential variables back from Tune's list of variables it copies
    into every trial's runtime env (study.tune.ray_adapter.credentials_out_of_runtime_env). If
    Tune moves or renames that list, this fails: the hold-back would then do nothing."""
    assert fresh_tune["propagate_type"] == "set"
    assert "AWS_SECRET_ACCESS_KEY" in fresh_tune["propagate"], fresh_tune


def test_credentials_are_held_back_on_a_local_instance_only(monkeypatch):
    from ray.tune.execution import class_cache

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_adapter.credentials_out_of_runtime_env()
    assert "AWS_SECRET_ACCESS_KEY" not in class_cache.ENV_VARS_TO_PROPAGATE
    monkeypatch.setenv("RAY_ADDRESS", "ray://cluster:10001")
    ray_adapter.credentials_out_of_runtime_env()
    assert "AWS_SECRET_ACCESS_KEY" in class_cache.ENV_VARS_TO_PROPAGATE


# -- when Ray moved what a change needs -------------------------------------------------


@pytest.mark.parametrize("module, attr", [
    ("ray._private.utils", "set_sigterm_handler"),
    ("ray._private.ray_constants", "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"),
])
def test_signal_change_is_an_error_when_ray_moved_it(monkeypatch, module, attr):
    monkeypatch.delattr(importlib.import_module(module), attr)
    with pytest.raises(RayChanged) as e, ray_adapter.ray_keeps_our_signals():
        pass
    assert attr in str(e.value) and f"Ray {ray.__version__}" in str(e.value)


@pytest.mark.parametrize("moved", ["gone", "frozen"])
def test_credentials_change_is_an_error_when_tune_moved_it(monkeypatch, moved):
    from ray.tune.execution import class_cache

    if moved == "gone":
        monkeypatch.delattr(class_cache, "ENV_VARS_TO_PROPAGATE")
    else:  # changing it in place would do nothing
        monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE",
                            frozenset(class_cache.ENV_VARS_TO_PROPAGATE))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(RayChanged, match="ENV_VARS_TO_PROPAGATE") as e:
        ray_adapter.credentials_out_of_runtime_env()
    assert f"Ray {ray.__version__}" in str(e.value)
    # on a cluster Tune's behaviour stays, and nothing was held back: the study runs
    monkeypatch.setenv("RAY_ADDRESS", "ray://cluster:10001")
    ray_adapter.credentials_out_of_runtime_env()


def _one_warning(caplog: pytest.LogCaptureFixture, *words: str) -> None:
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1, lines
    assert f"Ray {ray.__version__}" in lines[0], lines
    assert all(w in lines[0] for w in words), (words, lines)


def test_actor_change_warns_when_tune_moved_it(monkeypatch, caplog):
    from ray.tune.execution import class_cache

    monkeypatch.delattr(class_cache, "DEFAULT_ENV_VARS")
    ray_adapter.plain_worker_actors()
    _one_warning(caplog, "DEFAULT_ENV_VARS")


def test_lean_instance_warns_when_ray_moved_it(monkeypatch, caplog):
    from ray._private.node import Node

    monkeypatch.delattr(Node, "start_log_monitor")
    ran = []
    with ray_adapter.lean_local_instance(prestart=1):
        ran.append(True)  # Ray starts as usual
    assert ran
    _one_warning(caplog, "start_log_monitor")


def test_stop_warns_when_ray_moved_its_node(monkeypatch, caplog):
    from ray._private import worker

    monkeypatch.delattr(worker, "_global_node")
    ray_adapter.stop_monitor()  # then the slow way: Ray's own exit handler stops it
    _one_warning(caplog, "_global_node")


def test_init_imports_warn_when_one_is_missing(monkeypatch, caplog):
    monkeypatch.setattr(ray_adapter, "INIT_IMPORTS", ("json", "ray._no_such_module"))
    ray_adapter.import_init_modules()
    _one_warning(caplog, "ray._no_such_module")


# --------------------------------------------------------------------------------------
# The lean local instance, started for real
# --------------------------------------------------------------------------------------


def ray_workers(pid: int) -> list[str]:
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
    from tests.test_ray_adapter import ray_workers
    time.sleep(4)  # the raylet pre-starts its workers once the driver is connected
    workers = len(ray_workers(psutil.Process().pid))
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
    # one slot of one CPU leaves a CPU free here (test_lifecycle.test_slots_come_from_the_spec)
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
