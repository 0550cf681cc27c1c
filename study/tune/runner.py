"""Run a study: Ray Tune orchestrates, Optuna proposes, MLflow records, PyTorch trains.

The driver owns every store: Optuna's RDB storage (through the searcher) and MLflow
(through :class:`StudyCallback`, batched). Workers only train and report per epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.records import (
    ENDED,
    METRIC_KEYS,
    ConfigRecord,
    ReportError,
    RunRecord,
    RunStatus,
    StudyResult,
    StudyStatus,
    check_execution_id,
    check_run_id,
    check_study_ref,
    error_summary,
    new_execution_id,
)
from study.records import last_line as _last_line
from study.redact import (
    redact_text,
    redact_tree,
    redact_uri,
    usable_uri,
    use_http_credentials,
)
from study.report.stats import finite_values, usable_value
from study.spec import SpecError, StudySpec, load_spec
from study.terminal import say
from study.tracking.answer import (
    EXPERIMENT_TAGS,
    NOTE_TAG,
    Answer,
    answer_of,
    experiment_view_tag,
    note_text,
    runs_view_url,
)
from study.train.checkpoints import CheckpointStore
from study.tune import interrupts, ray_adapter
from study.tune.progress import Echo, OnProgress

if TYPE_CHECKING:  # imports Ray Tune: at run time only inside run()/resume()
    from study.tune.callback import StudyCallback

logger = logging.getLogger(__name__)

__all__ = ["METRIC_KEYS", "resume", "run"]



# --------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------


class _Background:
    """fn(*args) in a helper thread; `result` waits and returns it or re-raises its error."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True,
                                       name="study-stores")
        self.thread.start()

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.value = fn(*args)
        except BaseException as e:  # re-raised in the caller's thread
            self.error = e

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def _open_stores(spec: StudySpec, check_tracking: bool) -> Any:
    """Check the tracking store unless done already (a new SQLite store runs seconds of
    schema migrations) and open Optuna's storage."""
    from study.tracking.writer import check_tracking_uri

    if check_tracking:
        check_tracking_uri(spec.tracking_uri)
    return _open_optuna_storage(spec)


def slots(spec: StudySpec, cluster: Mapping[str, float] | None = None) -> int | None:
    """Trials the study runs at once: `execution.concurrency`, else as many as the
    cluster's GPUs (GPU runs) or CPUs hold. Before Ray is up (`cluster` None): this
    machine's CPUs, and None for GPU runs."""
    if spec.concurrency:
        return int(spec.concurrency)
    if spec.gpu > 0:
        return max(1, int(cluster["GPU"] / spec.gpu)) if cluster else None
    return max(1, int((cluster["CPU"] if cluster else os.cpu_count() or 1) / spec.cpu))


def spare_cpu(spec: StudySpec) -> bool:
    """Does the study, at full concurrency on the local instance, leave a CPU free?"""
    n = slots(spec)
    return n is not None and n * spec.cpu < (os.cpu_count() or 1)


def _check_cluster(spec: StudySpec) -> dict[str, float]:
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    where = os.environ.get("RAY_ADDRESS") or "the local Ray instance"
    if spec.gpu > 0 and gpus < spec.gpu:
        raise SpecError(
            f"{spec.source}: field `resources.gpu`: {spec.gpu:g} GPU per run, but {where} has "
            f"{gpus:g} GPUs. Allowed: 0 here, or run on a cluster with GPUs "
            "(RAY_ADDRESS / `ray job submit`).")
    if spec.cpu > cpus:
        raise SpecError(
            f"{spec.source}: field `resources.cpu`: {spec.cpu:g} CPUs per run, but {where} has "
            f"{cpus:g}. Allowed: at most {cpus:g}.")
    return {"CPU": cpus, "GPU": gpus}


def _open_optuna_storage(spec: StudySpec) -> Any:
    import optuna

    from study.tracking.stores import seed_optuna_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed_optuna_storage(spec.optuna_storage)
    try:
        return optuna.storages.RDBStorage(spec.optuna_storage)
    except Exception as e:
        raise SpecError(
            f"{spec.source}: field `storage.optuna`: cannot open "
            f"{redact_uri(spec.optuna_storage)!r} "
            f"({type(e).__name__}: {redact_text(_last_line(str(e)))}). Allowed: an SQLAlchemy "
            "URL such as sqlite:///optuna.db or postgresql://user:pw@host/db (reachable, with "
            "its driver installed).") from None


def run(spec: StudySpec | str | os.PathLike[str], *,
        overrides: Mapping[str, Any] | None = None, echo: Echo | None = say,
        on_progress: OnProgress | None = None) -> StudyResult:
    """Run a study to the end and return every run and the best configuration.

    Args:
        spec: a path to a YAML spec or a loaded :class:`StudySpec`.
        overrides: dotted keys applied to the YAML before validation,
            e.g. ``{"search.trials": 2, "train.epochs": 1}``.
        echo: where progress lines go (``None``: silent).
        on_progress: called with a :class:`study.records.Progress` at most about once a
            second while runs report, and once more at the end (``finished`` set), in the
            calling process: e.g. to move a notebook's progress bar. If it raises, the
            error is logged and it is not called again; the study goes on.

    Raises:
        SpecError: a bad spec, data file or store, found before any run.
        ReportError: the runs ended and are stored but the report failed
            (``study report EXECUTION`` rebuilds it); ``.result`` holds them.
    """
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec, overrides=overrides)
    elif overrides:
        raise ValueError("overrides apply to a spec file; pass a path, not a StudySpec")
    spec = dataclasses.replace(spec, tracking_uri=use_http_credentials(spec.tracking_uri))
    with interrupts.restored_on_error():
        return _run(spec, echo, on_progress)


def _run(spec: StudySpec, echo: Echo | None, on_progress: OnProgress | None) -> StudyResult:
    t0 = time.monotonic()
    storage, cluster = _prepare(spec)
    from study.search.searcher import BlockSearcher
    from study.tracking.writer import MlflowWriter
    from study.tune.callback import StudyCallback

    execution = new_execution_id(spec.name)
    fuse, seeds_per_block = block_plan(spec, cluster)
    writer = MlflowWriter(
        spec.tracking_uri, spec.name, parent_name=execution,
        parent_tags={"study.name": spec.name, "study.execution": execution,
                     "study.question": spec.question,
                     "study.spec_file": redact_text(spec.source),
                     "study.status": StudyStatus.RUNNING,
                     "optuna.storage": redact_uri(spec.optuna_storage),
                     "optuna.study_name": execution,
                     "ray.address": redact_uri(os.environ.get("RAY_ADDRESS", "local")),
                     NOTE_TAG: note_text(spec.question, spec.summary())},
        parent_params=_parent_params(spec), experiment_tags=EXPERIMENT_TAGS,
    )
    try:
        writer.log_parent_text(_spec_yaml(spec), "spec.yaml")
        searcher = BlockSearcher(spec, storage=storage, study_name=execution,
                                 seeds_per_block=seeds_per_block,
                                 trial_attrs=_trial_attrs(execution, writer.experiment_id,
                                                          writer.parent_run_id))
    except BaseException as e:  # the parent run exists: never left RUNNING; re-raised
        _abandon(writer, e)
        raise
    if echo:
        echo(spec.summary())
        echo(f"execution {execution}: Ray {cluster['CPU']:g} CPU / {cluster['GPU']:g} GPU; "
             f"MLflow {redact_uri(spec.tracking_uri)} (experiment {spec.name!r}); "
             f"Optuna {redact_uri(spec.optuna_storage)}; "
             f"{_describe_plan(spec, fuse, seeds_per_block)}")
        echo(f"runs, live: {runs_view_url(spec.tracking_uri, writer.experiment_id)}")
    callback = StudyCallback(spec, writer, echo, cpus=cluster["CPU"], on_progress=on_progress)
    searcher.on_look = look_hook(callback, writer)
    return _execute(spec, execution, execution, searcher, writer, callback, storage,
                    spec.total_runs, echo, t0, fuse)


def _abandon(writer: Any, error: BaseException) -> None:
    """End the parent run of an execution that failed before its first trial: KILLED for
    Ctrl-C, else FAILED, with the error as its `study.error` tag."""
    stopped = isinstance(error, KeyboardInterrupt)
    writer.close("KILLED" if stopped else "FAILED", tags={
        "study.status": StudyStatus.INTERRUPTED if stopped else StudyStatus.FAILED,
        "study.error": error_summary(error)})


def look_hook(callback: StudyCallback, writer: Any) -> Callable[..., None]:
    """What the searcher calls at each look of the sequential phase: the lines go to the
    terminal, and to the parent run as tag `study.look.K` (with `study.looks`: K)."""
    def on_look(lines: list[str], path: Any, planned: int) -> None:
        callback.progress.look(lines, planned)
        text = "\n".join(lines)
        writer.set_tags("", {f"study.look.{path.rounds}": text[:4000],
                             "study.looks": path.rounds})

    return on_look


def resume(target: str | os.PathLike[str], *, tracking_uri: str | None = None,
           optuna_storage: str | None = None, echo: Echo | None = say,
           on_progress: OnProgress | None = None) -> StudyResult:
    """Continue an interrupted study execution (driver killed, Ctrl-C, SIGTERM).

    `target` is a spec file, a study name (its latest execution) or an execution id. The
    execution's own spec (its parent run's spec.yaml) is what continues. Finished runs are
    kept, never re-run; runs the dead driver left unfinished are deleted from MLflow and run
    again; configurations Optuna was asked for are reused, not asked again; the parent run
    is reused. The counts of runs, MLflow child runs and Optuna trials end as those of an
    uninterrupted execution.

    The stores' copies of URIs are redacted: a secret (a database password) comes from
    `optuna_storage`, $STUDY_OPTUNA_STORAGE or the spec file given as `target`; the tracking
    URI from `tracking_uri`, $MLFLOW_TRACKING_URI or that spec file.

    Raises:
        SpecError: nothing to resume, or a store or secret it needs is missing.
        ReportError: the runs ended and are stored but the report failed.
    """
    with interrupts.restored_on_error():
        return _resume(target, tracking_uri, optuna_storage, echo, on_progress)


def _resume(target: str | os.PathLike[str], tracking_uri: str | None,
            optuna_storage: str | None, echo: Echo | None,
            on_progress: OnProgress | None) -> StudyResult:
    from mlflow.tracking import MlflowClient

    from study.search.objectives import run_objectives
    from study.search.searcher import BlockSearcher
    from study.tracking.writer import MlflowWriter
    from study.tune.callback import StudyCallback

    t0 = time.monotonic()
    spec, rows, parent = _resume_target(target, tracking_uri, optuna_storage)
    execution = parent.data.tags["study.execution"]
    storage, cluster = _prepare(spec)
    done = {r["run_key"]: r for r in rows if r["status"] in ENDED}
    stale = [r for r in rows if r["status"] not in ENDED]
    _settle_children(spec.tracking_uri, execution, done.values(), stale)
    # Unfinished runs restart from epoch 1 in their new MLflow child; also those whose child
    # the dead driver never got to write, so no checkpoint may survive.
    CheckpointStore(_checkpoint_dir(spec, execution)).clear()
    fuse, seeds_per_block = block_plan(spec, cluster)
    searcher = BlockSearcher(spec, storage=storage, study_name=execution,
                             seeds_per_block=seeds_per_block,
                             trial_attrs=_trial_attrs(execution, parent.info.experiment_id,
                                                      parent.info.run_id))
    remaining = searcher.restore_progress(
        {k: usable_value(r, spec.metric) for k, r in done.items()},
        pruned={k for k, r in done.items() if r["status"] == RunStatus.PRUNED},
        objectives={k: run_objectives(spec, r) for k, r in done.items()},
        rows=done.values())
    n_resume = int(parent.data.tags.get("study.resumes", "0")) + 1
    MlflowClient(spec.tracking_uri).update_run(parent.info.run_id, status="RUNNING")
    writer = MlflowWriter(spec.tracking_uri, spec.name, parent_name=execution,
                          parent_tags={"study.status": StudyStatus.RUNNING,
                                       "study.resumes": n_resume},
                          parent_params={}, parent_run_id=parent.info.run_id,
                          experiment_tags=EXPERIMENT_TAGS)
    writer.child_ids.update({k: r["mlflow_run_id"] for k, r in done.items()})
    callback = StudyCallback(spec, writer, echo, cpus=cluster["CPU"], on_progress=on_progress)
    callback.progress.planned = searcher.planned_runs
    searcher.on_look = look_hook(callback, writer)
    for r in done.values():
        callback.keep(RunRecord.from_row(r))
    if echo:
        looks = f" (sequential phase: look {searcher.looks_shown})" \
            if searcher.looks_shown else ""
        echo(f"resuming {execution}{looks}: {len(done)} of {searcher.planned_runs} runs done "
             f"and kept, {len(stale)} unfinished run(s) to run again, {remaining} runs left; "
             f"Ray {cluster['CPU']:g} CPU / {cluster['GPU']:g} GPU")
    return _execute(spec, execution, f"{execution}-resume{n_resume}", searcher, writer,
                    callback, storage, remaining, echo, t0, fuse)


def _resume_target(target: str | os.PathLike[str], tracking_uri: str | None,
                   optuna_storage: str | None) -> tuple[StudySpec, list[dict[str, Any]], Any]:
    """The spec, runs and parent run of the execution to resume (a study name, an execution
    id or a spec file), with the stores' credentials from the flag, environment or file."""
    from study.tracking.read import runs_from_mlflow
    from study.tracking.writer import reachable_tracking_uri

    given = load_spec(target) if _is_file(target) else None
    name = given.name if given else check_study_ref(str(target), "study resume: TARGET")
    uri = reachable_tracking_uri(given.tracking_uri if given else tracking_uri)
    spec, rows, parent = runs_from_mlflow(uri, name)
    tags = parent.data.tags
    execution = check_execution_id(
        tags.get("study.execution"), f"MLflow run {parent.info.run_id}: tag study.execution")
    if tags.get("study.status") == StudyStatus.FINISHED:
        raise SpecError(f"study execution {execution} finished: nothing to resume "
                        f"(`study report {execution}` rebuilds its report).")
    spec = dataclasses.replace(spec, tracking_uri=uri, optuna_storage=usable_uri(
        tags.get("optuna.storage") or spec.optuna_storage,
        [("STUDY_OPTUNA_STORAGE", os.environ.get("STUDY_OPTUNA_STORAGE")),
         ("the spec file (storage.optuna)", given.optuna_storage if given else None)],
        what=f"the Optuna storage of {execution}",
        explicit=("--optuna-storage", optuna_storage)))
    return spec, rows, parent


def _settle_children(uri: str, execution: str, done: Iterable[Mapping[str, Any]],
                     stale: Iterable[Mapping[str, Any]]) -> None:
    """Before a resume: unfinished runs' MLflow children are deleted (they run again,
    afresh); ended runs whose child the dead driver left RUNNING are ended."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for r in stale:  # left RUNNING (driver killed) or KILLED (stopped)
        check_run_id(r["mlflow_run_id"], f"execution {execution}: a child run's id")
        client.set_tag(r["mlflow_run_id"], "study.superseded_by_resume", "true")
        client.delete_run(r["mlflow_run_id"])
    for r in done:  # the driver died between a run's final tags and its end
        if r.get("mlflow_status") == "RUNNING":
            client.set_terminated(r["mlflow_run_id"],
                                  "FAILED" if r["status"] == RunStatus.FAILED else "FINISHED")


def _trial_attrs(execution: str, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """User attributes every Optuna trial of the execution carries: where its runs are."""
    return {"execution": execution, "mlflow_experiment_id": experiment_id,
            "mlflow_parent_run_id": parent_run_id}


def _is_file(target: str | os.PathLike[str]) -> bool:
    """Is `target` an existing file? False for what cannot be a path (too long, NUL)."""
    try:
        return Path(target).is_file()
    except (OSError, ValueError):
        return False


def block_plan(spec: StudySpec, cluster: Mapping[str, float]) -> tuple[bool, int]:
    """(fuse, seeds per block): how the runs of a configuration are grouped into Tune trials.

    A block holds every level of its seeds, so the arms of a pair train side by side. Fused
    training (`train.fuse`: on, or auto on a GPU) wants big blocks: a configuration is split
    only as much as needed to keep every slot busy (configurations in flight are at most
    `search.pending`). Unfused, a block is one pair (or `execution.runs_per_trial` runs).
    """
    fuse = spec.fuse == "on" or (spec.fuse == "auto" and spec.gpu > 0)
    if spec.runs_per_trial:
        return fuse, max(1, spec.runs_per_trial // len(spec.levels))
    if not fuse:
        return fuse, 1
    n = slots(spec, cluster) or 1  # never None with the cluster's resources
    splits = max(1, math.ceil(n / max(1, min(spec.trials, spec.pending))))
    return fuse, max(1, math.ceil(spec.repeats / splits))


def _describe_plan(spec: StudySpec, fuse: bool, seeds_per_block: int) -> str:
    runs = min(seeds_per_block, spec.repeats) * len(spec.levels)
    how = "fused where the architecture allows" if fuse else "one after another"
    return f"up to {runs} run(s) per Tune trial, trained {how}"


def _prepare(spec: StudySpec) -> tuple[Any, dict[str, float]]:
    """Everything that must hold before any run starts: stores reachable, Ray up, the
    resources the spec asks for present. From here on SIGINT and SIGTERM interrupt the
    study (study.tune.interrupts): at once until Ray is up, then held while the stores are
    written, until the trials start (_execute). Its callers give the caller's handlers
    back if it raises (interrupts.restored_on_error)."""
    from study.data.load import check_dataset
    from study.tracking.writer import check_tracking_uri

    interrupts.stop_now()  # before Ray starts, so that Ray's own handling never applies
    check_dataset(spec.dataset, spec.source)  # a bad data file fails here, before any store
    _check_job_paths(spec)
    if os.environ.get(JOB_ENV):
        # A job's working directory is a temporary copy that Ray can delete while the job
        # runs (ray-project/ray#52343); every store path is absolute (checked above),
        # so leave it before anything (MLflow) asks for the working directory.
        os.chdir(_results_dir(spec) if "://" not in spec.results_dir else Path.home())
    server = "://" in spec.tracking_uri and not spec.tracking_uri.startswith("sqlite:")
    if server:  # a quick health check, before Ray starts
        check_tracking_uri(spec.tracking_uri)
    ray_adapter.tune_defaults()
    ray_adapter.quiet_ray_messages()
    # Ray starts here (seconds, mostly waiting for its processes; in the main thread, since
    # its processes die with the thread that started them) while a helper thread imports
    # MLflow and Optuna and opens the stores; what ray.init imports is imported first.
    ray_adapter.import_init_modules()
    stores = _Background(_open_stores, spec, not server)
    ray_adapter.init_ray(prestart=slots(spec), spare_cpu=spare_cpu(spec))
    interrupts.hold()
    storage = stores.result()
    import ray.tune  # noqa: F401

    ray_adapter.plain_worker_actors()
    cluster = _check_cluster(spec)
    _check_shared_results(spec)
    ray_adapter.credentials_out_of_runtime_env()
    return storage, cluster


JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for a `ray job submit` entrypoint


def _check_job_paths(spec: StudySpec) -> None:
    """Under `ray job submit`, no store may live in the job's temporary working directory."""
    if not os.environ.get(JOB_ENV):
        return
    cwd = Path.cwd().resolve()
    for field, value, env in (("storage.tracking", spec.tracking_uri, "MLFLOW_TRACKING_URI"),
                              ("storage.optuna", spec.optuna_storage, "STUDY_OPTUNA_STORAGE"),
                              ("storage.results", spec.results_dir, "STUDY_RESULTS_DIR")):
        path = value[len("sqlite:///"):] if value.startswith("sqlite:///") else \
            (None if "://" in value else str(Path(value).resolve()))
        if path and Path(path).resolve().is_relative_to(cwd):
            raise SpecError(
                f"{spec.source}: field `{field}`: {redact_uri(value)!r} lies in the job's working "
                f"directory {cwd}, a temporary copy that Ray deletes. Allowed: a durable, "
                f"shared location: set {env} in the environment of the cluster's nodes "
                f"(a URL with a password: there, not in `ray job submit --runtime-env-json`, "
                f"which Ray logs in plain text), or `{field}` in the spec.")


def _check_shared_results(spec: StudySpec) -> None:
    """On more than one node, a local results path must be the same folder on every node
    (NFS and the like): each node is asked whether it sees a file the driver just wrote."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2 or "://" in spec.results_dir:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = Path(_results_dir(spec)) / f".study-probe-{secrets.token_hex(4)}"
    marker.write_text("probe")
    try:
        @ray.remote(num_cpus=0)
        def sees(path: str) -> bool:
            return os.path.exists(path)

        refs = {n["NodeID"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(marker)) for n in nodes}
        blind = [nid for nid, ref in refs.items() if not ray.get(ref, timeout=60)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise SpecError(
            f"{spec.source}: field `storage.results`: {spec.results_dir!r} is not shared: "
            f"{len(blind)} of {len(nodes)} nodes do not see it ({', '.join(blind)[:200]}). "
            "Allowed on a multi-node cluster: a URI (s3://bucket/path, gs://...) or a path "
            "every node mounts (NFS); set STUDY_RESULTS_DIR or `storage.results`.")


def _execute(spec: StudySpec, execution: str, tune_name: str, searcher: Any, writer: Any,
             callback: StudyCallback, storage: Any, num_samples: int, echo: Echo | None,
             t0: float, fuse: bool) -> StudyResult:
    """Run the trials, then (whatever happened) write the report and close the stores."""
    tuner = _tuner(spec, execution, tune_name, searcher, callback, num_samples, fuse)
    status = StudyStatus.FAILED
    report_error: Exception | None = None
    try:
        status = _fit(spec, tuner, callback, searcher, num_samples)
    finally:
        # Once the trials are over, a signal waits until the report is written and the
        # parent run is closed (about a second), so the stores are never left half-done.
        interrupts.hold()
        writer.flush()
        result = _result(spec, execution, status, callback, searcher, writer,
                         time.monotonic() - t0)
        for rec in result.runs:
            rec.mlflow_run_id = writer.child_ids.get(rec.run_key)
        if status != StudyStatus.FAILED:
            try:
                _report(spec, result, storage, writer, _report_dir(spec, execution))
            except Exception as e:  # raised below, once the stores are closed
                report_error = e
        _close(spec, result, callback, writer, report_error)
        late = interrupts.held()
        interrupts.restore()
        if late and echo:
            echo(f"{late} arrived after the last run: the study was {status}; its report "
                 "and the stores were written first")
    if report_error is not None:
        raise ReportError(result, report_error) from report_error
    return result


def _fit(spec: StudySpec, tuner: Any, callback: StudyCallback, searcher: Any,
         num_samples: int) -> str:
    """Run the trials; the study's status once they are over (a StudyStatus)."""
    try:
        if interrupts.held():  # it came while the stores were being prepared
            return StudyStatus.INTERRUPTED
        interrupts.through_tune()  # SIGTERM stops the trials like Ctrl-C
        if num_samples > 0:
            tuner.fit()
        return _outcome(spec, callback, searcher)
    except KeyboardInterrupt:
        return StudyStatus.INTERRUPTED


def _tuner(spec: StudySpec, execution: str, tune_name: str, searcher: Any,
           callback: StudyCallback, num_samples: int, fuse: bool) -> Any:
    """The Tuner of this execution: the trainable with its data and resources, the block
    searcher, the scheduler, and the callback that records every run."""
    from ray import tune

    from study.tune.trainable import trainable

    dataset = spec.dataset.as_dict()
    splits = None
    if dataset.get("path"):  # read once here; workers get it from the object store
        from study.data.load import load_splits

        dataset["path"] = str(Path(dataset["path"]).resolve())
        splits = load_splits(spec.dataset)
    callback.pruned_trials = searcher.pruned_trials  # one set: the scheduler fills it
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, splits=splits),
                            {"cpu": spec.cpu, "gpu": spec.gpu}),
        param_space={"study": spec.name, "dataset": dataset, "threads": max(1, int(spec.cpu)),
                     "gpu": spec.gpu > 0, "checkpoint_every": spec.checkpoint_every,
                     "checkpoint_dir": _checkpoint_dir(spec, execution), "fuse": fuse,
                     "metric": spec.metric, "retries": spec.retries},
        # the sequential phase adds trials after the search: the cap is the most it can
        # reach, and the searcher ends the study (FINISHED)
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=max(
                                        spec.most_runs if spec.sequential else num_samples, 1),
                                    max_concurrent_trials=spec.concurrency,
                                    scheduler=_scheduler(spec, searcher.pruned_trials),
                                    reuse_actors=True, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=tune_name, storage_path=_results_dir(spec), verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.retries),
            callbacks=[callback]),
    )


def _scheduler(spec: StudySpec, pruned_trials: set[str]) -> Any:
    """ASHA that tells the searcher which trials it stopped, or None (FIFO)."""
    if spec.scheduler != "asha":
        return None
    from study.tune.callback import PruningASHA

    return PruningASHA(pruned_trials, time_attr="epoch", metric=spec.metric, mode=spec.mode,
                       max_t=int(spec.fixed.get("epochs", 10**6)),
                       grace_period=spec.grace_period, reduction_factor=spec.reduction_factor)


def _outcome(spec: StudySpec, callback: StudyCallback, searcher: Any) -> str:
    """finished (the searcher handed out its last block and every run ended), failed
    (every run failed) or interrupted."""
    counts = callback.counts()
    planned = searcher.planned_runs
    if planned and counts[RunStatus.FAILED] == planned:
        return StudyStatus.FAILED
    ended = sum(counts[k] for k in ENDED)
    done = ended == planned and searcher.finished
    return StudyStatus.FINISHED if done else StudyStatus.INTERRUPTED


def _close(spec: StudySpec, result: StudyResult, callback: StudyCallback, writer: Any,
           report_error: Exception | None) -> None:
    """Tag and end the parent run: KILLED if interrupted, FAILED if every run failed or the
    report could not be made, else FINISHED; the answer (study.tracking.answer) as its
    metrics, tags and description; writes MLflow dropped go into `result`."""
    best = result.best
    answer = answer_of(result.effects, metric=spec.metric,
                       best=(best.index, best.value) if best and best.value is not None
                       else None)
    tags: dict[str, Any] = {f"study.runs_{k}": v for k, v in callback.counts().items()}
    tags["study.status"] = result.status
    tags.update(answer.tags)
    if result.effects:
        tags[NOTE_TAG] = note_text(spec.question, spec.summary(), result.effects)
    if report_error is not None:
        tags["study.report_error"] = error_summary(report_error)
    mlflow_status = {StudyStatus.FINISHED: "FINISHED",
                     StudyStatus.INTERRUPTED: "KILLED"}.get(result.status, "FAILED")
    if report_error is not None and mlflow_status == "FINISHED":
        mlflow_status = "FAILED"
    view = _save_view(writer, result.execution, answer)
    writer.close(mlflow_status, tags=tags, metrics=answer.metrics)
    result.mlflow_dropped_writes = writer.dropped_writes
    result.mlflow_dropped_runs = [k or "(parent run)" for k in writer.dropped_runs]
    result.runs_url = runs_view_url(spec.tracking_uri, writer.experiment_id, view)


def _save_view(writer: Any, execution: str, answer: Answer) -> str | None:
    """Save the runs-table view that shows the answer's columns; its name, or None when
    there is no answer or MLflow refused it (the link then opens the plain runs table)."""
    from mlflow.exceptions import MlflowException

    if not answer.metrics and not answer.tags:
        return None
    key, value = experiment_view_tag(execution, answer)
    try:
        writer.set_experiment_tag(key, value)
    except MlflowException as e:  # a convenience: the answer itself is on the parent run
        logger.warning("MLflow: the runs-table view %s was not saved (%s)", key,
                       _last_line(str(e)))
        return None
    return execution


def _report(spec: StudySpec, result: StudyResult, storage: Any, writer: Any,
            folder: Path) -> None:
    """Build the report, write it to `folder` and log it to the parent run."""
    from study.report.build import ReportInput, build_report, importance, verdict_table

    imp, note = importance(storage, result.optuna_study)
    rep = build_report(ReportInput(
        spec=spec, execution=result.execution, rows=result.table(), importance=imp,
        importance_note=note, parent_run_id=writer.parent_run_id,
        tracking_uri=spec.tracking_uri, status=result.status))
    rep.write(folder)
    writer.client.log_artifacts(writer.parent_run_id, str(folder), "report")
    result.report_dir = str(folder)
    result.effects = rep.effects
    result.verdict = verdict_table(rep, spec)


def _result(spec: StudySpec, execution: str, status: str, cb: StudyCallback,
            searcher: Any, writer: Any, wall: float) -> StudyResult:
    configs = []
    for c in searcher.configs:
        configs.append(ConfigRecord(index=c.index, optuna_trial=c.optuna_number,
                                    params=dict(c.params),
                                    value=c.value if c.told else None, runs=len(c.runs),
                                    usable_runs=len(finite_values(c.values.values())),
                                    objective_values=tuple(c.means or ())))
    runs = sorted(cb.records.values(), key=lambda r: (r.config, r.seed, str(r.level)))
    return StudyResult(name=spec.name, execution=execution, status=status, metric=spec.metric,
                       mode=spec.mode, runs=runs, configs=configs,
                       tracking_uri=spec.tracking_uri, experiment_id=writer.experiment_id,
                       parent_run_id=writer.parent_run_id, optuna_storage=spec.optuna_storage,
                       optuna_study=execution, wall_seconds=wall,
                       objectives=list(spec.objectives))


def _spec_yaml(spec: StudySpec) -> str:
    import yaml

    class NoAliases(yaml.SafeDumper):  # the spec reader refuses aliases: never write one
        def ignore_aliases(self, data: Any) -> bool:
            return True

    head = f"# {redact_text(spec.source)}, as run (overrides applied; secrets masked)\n"
    return head + yaml.dump(redact_tree(dict(spec.raw)), Dumper=NoAliases, sort_keys=False)


def _results_dir(spec: StudySpec) -> str:
    """Tune's storage path: a URI (s3://...) as given, a local or shared path made absolute."""
    if "://" in spec.results_dir:
        return spec.results_dir
    path = Path(spec.results_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _checkpoint_dir(spec: StudySpec, execution: str) -> str:
    """The execution's checkpoint folder; `execution` must be an execution id (it may come
    from a store), so the folder stays inside the results folder."""
    check_execution_id(execution, "execution id")
    return f"{_results_dir(spec).rstrip('/')}/{execution}/checkpoints"


def _report_dir(spec: StudySpec, execution: str) -> Path:
    """Reports are written locally (and logged to MLflow), under the results folder when it
    is a local path, else under ./study_reports."""
    check_execution_id(execution, "execution id")
    base = spec.results_dir if "://" not in spec.results_dir else "study_reports"
    return Path(base).resolve() / execution / "report"


def _trial_dirname(trial: Any) -> str:
    block = trial.config["block"]
    return f"{block[0]['run_key']}+{len(block)}-{trial.trial_id}"


def _parent_params(spec: StudySpec) -> dict[str, Any]:
    p: dict[str, Any] = {
        "dataset": spec.dataset.name, "model": spec.model, "repeats": spec.repeats,
        "sampler": spec.sampler, "trials": spec.trials, "seed": spec.seed,
        "metric": spec.metric, "mode": spec.mode, "cpu_per_run": spec.cpu,
        "gpu_per_run": spec.gpu, "total_runs": spec.total_runs, "pending": spec.pending,
        "aggregate": f"mean {spec.metric} over the runs of a configuration",
    }
    if spec.dataset.path:
        p["dataset_path"] = redact_uri(spec.dataset.path)
    if spec.compare_knob:
        p["compare"] = f"{spec.compare_knob}: {list(spec.compare_levels)}"
    if spec.sequential:
        p["sequential"] = spec.sequential.describe()
    for k, v in spec.fixed.items():
        p[f"fixed.{k}"] = v
    for k, d in spec.space.items():
        p[f"space.{k}"] = d.describe()
    return p
