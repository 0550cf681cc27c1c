"""Everything `study` changes in Ray and Tune's defaults, in one place; each change says what
it does, why, and names the test that fails when Ray no longer has what it changes.

Several changes reach into Ray's internals (``ray._private``, Tune's ``class_cache``).
When Ray moves what one of them changes, the change is loud, never silent:

- a change that keeps the study correct or its secrets safe (the driver's signal handling,
  credentials kept out of the trials' runtime env) raises :class:`RayChanged`, naming what
  moved and the Ray version, before any run starts;
- a change that only makes the study faster logs one WARNING line naming what moved, and
  the study runs as Ray would run it, only slower;
- a setting Ray reads without telling whether it still knows it (an environment variable,
  a log message's text) is checked by the tests only.

``tests/test_ray_adapter.py`` checks, without starting Ray, that the installed Ray still
has every internal named here with the shape used here; each section below names its
test. The measured gain of each speed change is in benchmarks/README.md ("What each
start-up and exit setting saved").
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from study import environ
from study.redact import credential_vars

logger = logging.getLogger(__name__)

__all__ = [
    "INIT_IMPORTS", "LOCAL_RAY_ENV", "PRESTART_OPTION", "QUIET_RAY_MESSAGES",
    "SPARE_CPU_RAY_ENV", "TUNE_ANALYSIS_LOGGER", "TUNE_ENV", "WORKER_PRELOAD", "RayChanged",
    "credentials_out_of_runtime_env", "fewer_prestarted", "import_init_modules", "init_ray",
    "lean_local_instance", "plain_worker_actors", "quiet_ray_messages",
    "ray_keeps_our_signals", "ray_version", "shutdown_ray", "stop_monitor",
    "tune_defaults",
]


class RayChanged(RuntimeError):
    """The installed Ray no longer has what a change that keeps a study correct or its
    secrets safe relies on (see the module docstring)."""


def ray_version() -> str:
    import ray

    return str(ray.__version__)


def _changed(what: str, needed_for: str) -> RayChanged:
    return RayChanged(
        f"Ray {ray_version()} has no {what}, which study changes {needed_for}. study cannot "
        "run safely with this Ray: install the Ray it was tested with, or update "
        "study/tune/ray_adapter.py (tests/test_ray_adapter.py shows what moved).")


def _moved(what: str, effect: str) -> None:
    """One WARNING line for a speed change that no longer applies."""
    logger.warning("study: Ray %s has no %s; %s (study/tune/ray_adapter.py, "
                   "tests/test_ray_adapter.py)", ray_version(), what, effect)


# --------------------------------------------------------------------------------------
# Tune's output (test: test_tune_reads_the_settings_study_gives_it)
# --------------------------------------------------------------------------------------

# Tune's output, as environment variables (a setting of the user's wins): no per-trial
# JSON/CSV/TensorBoard files, which duplicate MLflow; and the classic output, which
# verbose=0 silences (the new one still prints where results lie), as the study prints its own.
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0"}

# Without those files Tune's result grid warns that it cannot load trials' metrics: the
# study builds its results from its callback, so that logger says only ERRORs.
TUNE_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"


def tune_defaults() -> None:
    """Set TUNE_ENV (where unset) and quiet Tune's result grid."""
    for name, value in TUNE_ENV.items():
        os.environ.setdefault(name, value)
    logging.getLogger(TUNE_ANALYSIS_LOGGER).setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------
# Ray's messages (test: test_quiet_messages_are_what_ray_logs)
# --------------------------------------------------------------------------------------

# Ray's log messages that say nothing to the user of a study, by logger and the start of
# the message: the token-authentication notice of a local instance (it serves this study
# only), and Tune's advice on an interrupted run (to call Tuner.restore: a study continues
# with `study resume`, which the study says itself). Cosmetic: if Ray rewords one, it shows.
QUIET_RAY_MESSAGES = {
    "ray._private.authentication.authentication_token_setup": (
        "Token authentication is enabled for this Ray cluster",),
    "ray.tune.tune": ("Stop signal received", "Experiment has been interrupted",
                      "Trials did not complete"),
}


class _DropMessages(logging.Filter):
    """Drops the records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__("study")
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_ray_messages() -> None:
    """Filter QUIET_RAY_MESSAGES out of Ray's loggers (once per process)."""
    for name, prefixes in QUIET_RAY_MESSAGES.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in log.filters):
            log.addFilter(_DropMessages(prefixes))


# --------------------------------------------------------------------------------------
# The driver's imports (test: test_init_imports_exist)
# --------------------------------------------------------------------------------------

# What ray.init imports on first use (all installed with ray[tune,default]): imported before
# the runner's helper thread starts, so that two threads never import the same modules at
# once. If one is missing, ray.init imports what it needs itself: a WARNING.
INIT_IMPORTS = ("ray._private.node", "ray._private.services", "ray.dashboard.optional_deps",
                "ray.autoscaler.v2", "ray._common.usage", "grpc", "opentelemetry",
                "pydantic", "prometheus_client", "aiohttp", "aiohttp_cors", "click",
                "colorful", "opencensus")


def import_init_modules() -> None:
    """Import INIT_IMPORTS; one WARNING line names those that are missing."""
    missing = []
    for name in INIT_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        _moved(f"module(s) {', '.join(missing)}",
               "ray.init imports what it needs itself, beside the stores' thread")


# --------------------------------------------------------------------------------------
# The local instance's settings (tests: test_local_settings_are_read_by_ray,
# test_prestart_option_is_lowered_never_raised, test_lean_instance_patches_exist)
# --------------------------------------------------------------------------------------

# What each worker of a local Ray instance imports as it starts (study.tune.preload), through
# the system config key preload_python_modules: the first trials then find torch, Tune and
# the training code loaded. An unknown key stops Ray's GCS, so Ray itself is loud here.
# Measured: benchmarks/README.md.
WORKER_PRELOAD = ["study.tune.preload"]

# Set while the local instance starts (a setting of the user's wins): no task events, which
# feed only the dashboard and the State API, and make the driver wait for their last flush
# at exit. A variable, not a `_system_config` key: Ray ignores an unknown variable, but its
# GCS dies on an unknown key. Measured: benchmarks/README.md.
LOCAL_RAY_ENV = {"RAY_task_events_report_interval_ms": "0"}

# Also, when the study leaves a CPU free (runner.spare_cpu): workers at the driver's
# priority, not Ray's nice 15, so the imports the first run waits for keep the CPU while
# Ray and the driver start (with every CPU a slot, nice 15 keeps the driver's answers
# prompt). Measured: benchmarks/README.md.
SPARE_CPU_RAY_ENV = {"RAY_worker_niceness": "0"}

# The raylet's option naming how many workers it pre-starts (Ray: one per CPU).
PRESTART_OPTION = "--num_prestart_python_workers="

# Node's methods that start helper processes a local study does not use.
_SKIPPED = ("start_api_server", "start_monitor", "start_log_monitor")


def fewer_prestarted(arg: str, most: int) -> str:
    """`arg` of a Ray process's command line; the raylet's PRESTART_OPTION lowered to
    `most` (at least 1), never raised."""
    if not arg.startswith(PRESTART_OPTION):
        return arg
    try:
        return f"{PRESTART_OPTION}{min(int(arg[len(PRESTART_OPTION):]), max(1, most))}"
    except ValueError:
        return arg


@contextlib.contextmanager
def lean_local_instance(prestart: int | None = None) -> Iterator[None]:
    """While a local instance starts, skip the processes a study does not use (the dashboard
    process that `include_dashboard=False` still starts and ray.init waits for, the
    autoscaler monitor, the log monitor) and pre-start at most `prestart` workers (one
    beyond the trial slots only competes for the CPU). Speed only: if Ray moved what this
    patches (Node's methods, services.start_ray_process), a WARNING, and Ray starts as
    usual. Measured: benchmarks/README.md."""
    try:
        from ray._private import services
        from ray._private.node import Node

        originals = {name: getattr(Node, name) for name in _SKIPPED}
        start_ray_process = services.start_ray_process
    except (ImportError, AttributeError) as e:
        _moved(f"ray._private.node.Node.{'/'.join(_SKIPPED)} or "
               f"ray._private.services.start_ray_process ({e})",
               "the local instance starts Ray's dashboard process, monitors and a worker "
               "per CPU")
        yield
        return
    seen = {"dashboard call": False, "prestart option": prestart is None}

    def start_api_server(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("include_dashboard") is False:
            seen["dashboard call"] = True
            return None
        return originals["start_api_server"](self, *args, **kwargs)

    def skip(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def start_process(command: list[str], *args: Any, **kwargs: Any) -> Any:
        if prestart is not None:
            seen["prestart option"] |= any(a.startswith(PRESTART_OPTION) for a in command)
            command = [fewer_prestarted(arg, prestart) for arg in command]
        return start_ray_process(command, *args, **kwargs)

    Node.start_api_server, Node.start_monitor, Node.start_log_monitor = (
        start_api_server, skip, skip)
    services.start_ray_process = start_process
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(Node, name, fn)
        services.start_ray_process = start_ray_process
    if not seen["dashboard call"]:
        _moved("Node.start_api_server(include_dashboard=False) call in ray.init",
               "the local instance runs Ray's dashboard process")
    if not seen["prestart option"]:
        _moved(f"{PRESTART_OPTION} in the raylet's command line",
               "the local instance pre-starts a worker per CPU")


# --------------------------------------------------------------------------------------
# Signals (test: test_signal_patches_exist)
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def ray_keeps_our_signals() -> Iterator[None]:
    """While ray.init runs, keep Ray's SIGTERM handler (exit code 15) and its core worker's
    native failure handler out of this process, so that Ctrl-C and SIGTERM stay with
    study.tune.interrupts (a resumable study, exit 130); Ray's own processes keep theirs.
    Correctness: raises RayChanged if Ray moved either."""
    try:
        from ray._private import ray_constants
        from ray._private import utils as ray_utils

        set_sigterm_handler = ray_utils.set_sigterm_handler
        no_native_handler = ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
    except (ImportError, AttributeError) as e:
        raise _changed("ray._private.utils.set_sigterm_handler or ray._private.ray_constants"
                       f".RAY_DISABLE_FAILURE_SIGNAL_HANDLER ({e})",
                       "so that Ctrl-C and SIGTERM stop a study resumably") from None
    ray_utils.set_sigterm_handler = lambda handler: None
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = set_sigterm_handler
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = no_native_handler


# --------------------------------------------------------------------------------------
# Start and stop (test: test_shutdown_internals_exist; the lifecycle tests start Ray)
# --------------------------------------------------------------------------------------


def init_ray(prestart: int | None = None, spare_cpu: bool = False) -> None:
    """Join RAY_ADDRESS's cluster, or start a local instance that pre-starts at most
    `prestart` workers (with SPARE_CPU_RAY_ENV if `spare_cpu`). A Ray already initialised
    in this process is the caller's, used as it is.

    Without RAY_ADDRESS the instance is always this study's own (address "local"): a bare
    ray.init() would join the cluster that `ray start` last made on this machine (named
    in Ray's temp folder, even once that cluster is gone)."""
    import ray

    if ray.is_initialized():
        return  # the caller's Ray: theirs to stop
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=False)
    atexit.register(shutdown_ray)  # runs before Ray's own exit handler (registered first)
    if address:
        with ray_keeps_our_signals():
            ray.init(address=address, **kwargs)
    else:
        with lean_local_instance(prestart), ray_keeps_our_signals(), \
                environ.defaults({**LOCAL_RAY_ENV, **(SPARE_CPU_RAY_ENV if spare_cpu else {})}):
            ray.init(address="local", include_dashboard=False,
                     _system_config={"preload_python_modules": WORKER_PRELOAD}, **kwargs)


def shutdown_ray() -> None:
    """At exit, stop Ray (or leave the cluster) quicker than Ray's own exit handler, which
    waits for worker logs that never come (log_to_driver=False) and stops the autoscaler
    monitor after the GCS. Measured: benchmarks/README.md."""
    import ray

    stop_monitor()
    ray.shutdown()


def stop_monitor() -> None:
    """Stop the autoscaler monitor of the local instance this process started, if it runs
    one (normally it does not: lean_local_instance). Reads ray._private.worker._global_node;
    speed only, so if it moved a WARNING says so and Ray stops the slow way."""
    node = _global_node()
    if node is not None and getattr(node, "head", False):
        kill_monitor = getattr(node, "kill_monitor", None)
        if kill_monitor is None:
            _moved("Node.kill_monitor", "Ray stops the slow way")
        else:
            with contextlib.suppress(OSError):  # the monitor is gone already
                kill_monitor(check_alive=False)


def _global_node() -> Any:
    """The Ray node this process started (None for none, or if Ray moved it: a WARNING)."""
    worker = importlib.import_module("ray._private.worker")
    if not hasattr(worker, "_global_node"):
        _moved("ray._private.worker._global_node", "Ray stops the slow way")
        return None
    return worker._global_node


# --------------------------------------------------------------------------------------
# Tune's trial actors (tests: test_tune_actor_env_is_what_study_changes,
# test_tune_still_copies_credentials_where_the_runner_takes_them_out)
# --------------------------------------------------------------------------------------


def _class_cache() -> Any:
    """Tune's ray.tune.execution.class_cache (the runtime env of its trial actors)."""
    return importlib.import_module("ray.tune.execution.class_cache")


def plain_worker_actors() -> None:
    """Drop PL_DISABLE_FORK (for PyTorch Lightning, unused here) from the runtime env Tune
    gives its trial actors, since Ray never gives an actor with a runtime env of its own a
    pre-started, preloaded worker. Speed only: if Tune moved it, or sets more, a WARNING.
    Measured: benchmarks/README.md."""
    try:
        defaults = _class_cache().DEFAULT_ENV_VARS
    except (ImportError, AttributeError):
        _moved("ray.tune.execution.class_cache.DEFAULT_ENV_VARS",
               "each trial starts a new worker process")
        return
    defaults.pop("PL_DISABLE_FORK", None)
    if defaults:
        _moved(f"trial actors without an env of their own (Tune sets {sorted(defaults)})",
               "each trial starts a new worker process")


# Names Tune would copy into every trial's runtime env, held back on a local instance.
_held_back: set[str] = set()


def credentials_out_of_runtime_env() -> None:
    """Keep credential variables (study.redact.is_credential_var: AWS_*, *SECRET*, *TOKEN*,
    *PASSWORD*, *KEY*, ...) out of the trials' runtime env on a local Ray instance.

    Tune copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and
    AWS_SECURITY_TOKEN into every trial's runtime env, and Ray's runtime-env agent logs that
    env in plain text (logs/runtime_env_agent.log); a local instance's workers inherit the
    driver's environment anyway. On a cluster (RAY_ADDRESS set) Tune's behaviour stays: the
    other nodes may need the credentials (README: "Secrets"). Security: on a local
    instance, raises RayChanged if Tune's list moved."""
    on_cluster = bool(os.environ.get("RAY_ADDRESS"))
    try:
        names = _class_cache().ENV_VARS_TO_PROPAGATE
    except (ImportError, AttributeError):
        names = None
    if not isinstance(names, set):  # changed in place below: Tune reads it at each trial
        if on_cluster:
            return  # Tune's behaviour stays; nothing can have been held back
        raise _changed("ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE as a set"
                       + ("" if names is None else f" (it is a {type(names).__name__})"),
                       "to keep credentials out of Ray's logs")
    if on_cluster:
        names |= _held_back
        _held_back.clear()
    else:
        held = credential_vars(names)
        _held_back.update(held)
        names -= held
