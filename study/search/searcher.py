"""A Tune searcher that turns each Optuna configuration into its block of runs.

`BlockSearcher` owns the execution's Optuna study and drives it through Optuna's public
ask/tell API. For every configuration Optuna proposes it hands Tune one trial per block of
runs (every level of `seeds_per_block` seeds, see ``study.train.block``); when all runs of a
configuration have ended it tells Optuna one value: the mean of the metric over the
configuration's finished runs (diverged runs included with the value they reached; failed
runs and non-finite values left out; a configuration with no usable run is told as FAIL,
one the scheduler stopped early as PRUNED).

Deterministic asynchronous search: configuration k is asked for only after configurations
0..k-P have been told, and configuration j is told only after configuration j+P-1 was asked
(P = `search.pending`), always in order. So the history the sampler sees when proposing
configuration k is exactly configurations 0..k-P, whatever the timing, the number of workers
or the order in which runs finish: the same spec and seed propose the same configurations on
a laptop and on a cluster.

Sequential phase (`verdict.sequential`, see ``study.search.looks``): once every run of the
search has ended, the searcher looks at each comparison and, while some are unsettled,
hands out blocks of new pairs (existing configurations, new seeds, tagged with the look
they were added after), waits for them, and looks again; it ends the search (FINISHED)
when every comparison is settled or at its maximum. Optuna hears nothing of these runs: a
configuration's Optuna value is the one told after the search (Optuna trials are
immutable once told).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from study.records import RunStatus
from study.redact import redact_spec
from study.report.stats import USABLE, finite_mean, usable_value
from study.search.looks import LookPath, follow, look_lines
from study.search.objectives import config_means, run_objectives, study_directions
from study.search.space import define_by_run, expand_runs, make_sampler
from study.spec import StudySpec

__all__ = ["BlockSearcher", "ConfigState", "LookHook", "ask_attrs", "blocks_of", "open_study",
           "reattach_trial", "tell_attrs"]

# Called at each look with its terminal lines, the path so far and the runs now planned.
LookHook = Callable[[list[str], LookPath, int], None]


@dataclass
class ConfigState:
    index: int
    params: dict[str, Any]
    optuna_number: int
    runs: list[dict[str, Any]]
    values: dict[str, float | None] = field(default_factory=dict)  # run_key -> metric
    told: bool = False
    value: float | None = None
    pruned: set[str] = field(default_factory=set)  # runs stopped early by the scheduler
    # run_key -> its value of every objective; the means told (multi-objective studies)
    objectives: dict[str, tuple[float | None, ...]] = field(default_factory=dict)
    means: list[float] | None = None

    @property
    def complete(self) -> bool:
        return len(self.values) == len(self.runs)


def _records(result: dict | None) -> dict[str, dict[str, Any]]:
    """The per-run records of a block's result; Tune hands searchers the result flattened
    ("runs/<run_key>/<field>"), callbacks and tests pass it nested."""
    if not result:
        return {}
    if isinstance(result.get("runs"), dict):
        return result["runs"]
    out: dict[str, dict[str, Any]] = {}
    for k, v in result.items():
        if k.startswith("runs/"):
            key, _, name = k[len("runs/"):].rpartition("/")
            out.setdefault(key, {})[name] = v
    return out


def open_study(spec: StudySpec, storage: optuna.storages.BaseStorage,
               study_name: str) -> optuna.Study:
    """The execution's Optuna study: created on first use, loaded again on a resume. No
    pruner: Optuna hears one value per configuration, at its end."""
    return optuna.create_study(
        storage=storage, sampler=make_sampler(spec), pruner=optuna.pruners.NopPruner(),
        study_name=study_name, directions=study_directions(spec),
        load_if_exists=True)


def reattach_trial(study: optuna.Study, storage: optuna.storages.BaseStorage,
                   number: int) -> optuna.Trial:
    """A live handle on the RUNNING trial `number` that a dead driver asked for, so the
    values it never stored can be suggested into it.

    Optuna has no public call that reopens a trial (`Study.ask` always creates one), so this
    builds the `optuna.Trial` that `ask` builds, from the storage's public trial id. Its
    constructor is public but documented as not meant for direct use:
    tests/test_searcher.py::test_reattach_trial_continues_the_same_trial fails if that moves.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    return optuna.Trial(study, trial_id)


def ask_attrs(spec: StudySpec, index: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What a configuration's Optuna trial says about its runs when it is asked for (Optuna's
    dashboard shows these user attributes): its index, planned runs, seeds and levels."""
    attrs: dict[str, Any] = {"config": index, "runs_planned": len(runs),
                             "seeds": sorted({r["seed"] for r in runs})}
    if spec.compare_knob:
        attrs["compared"] = spec.compare_knob
        attrs["levels"] = [_json_value(v) for v in spec.compare_levels]
    return attrs


def tell_attrs(cfg: ConfigState) -> dict[str, Any]:
    """What it says once every run ended: counts, and each run's value (None: no value)."""
    usable = [k for k, v in cfg.values.items() if v is not None]
    return {"runs_ended": len(cfg.values), "runs_with_value": len(usable),
            "runs_pruned": len(cfg.pruned),
            "runs_without_value": len(cfg.values) - len(usable) - len(cfg.pruned),
            "run_values": {k: cfg.values[k] for k in sorted(cfg.values)}}


def _json_value(v: Any) -> Any:
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)


class BlockSearcher(Searcher):
    def __init__(self, spec: StudySpec, *, storage: optuna.storages.BaseStorage,
                 study_name: str, pruned_trials: set[str] | None = None,
                 seeds_per_block: int = 1,
                 trial_attrs: Mapping[str, Any] | None = None) -> None:
        """`trial_attrs`: user attributes every configuration's Optuna trial (and the study)
        carries besides its own (see :func:`ask_attrs`), e.g. the MLflow parent run id."""
        super().__init__(metric=spec.metric, mode=spec.mode)
        self.spec = spec
        # Tune trial ids the scheduler stopped early (filled by the runner's ASHA)
        self.pruned_trials = pruned_trials if pruned_trials is not None else set()
        self.storage = storage
        self.study = open_study(spec, storage, study_name)
        self.seeds_per_block = max(1, seeds_per_block)
        self.configs: list[ConfigState] = []
        self.queue: list[list[dict[str, Any]]] = []  # blocks not yet handed out
        self.trial_runs: dict[str, list[dict[str, Any]]] = {}  # trial id -> its block
        self.last: dict[str, dict] = {}  # running trial id -> its latest result
        self.live: set[str] = set()  # trials handed out and not completed
        self.next_to_tell = 0
        self.trial_attrs = dict(trial_attrs or {})
        for k, v in self.trial_attrs.items():
            self.study.set_user_attr(k, v)
        # the sequential phase (study.search.looks)
        self.rows: dict[str, dict[str, Any]] = {}  # run key -> the ended run, as looks read it
        self.outstanding: set[str] = set()  # runs of the current look not yet ended
        self.extra: set[str] = set()  # runs the sequential phase planned
        self.looks_shown = 0  # looks passed to on_look
        self.sequential_done = spec.sequential is None
        self.on_look: LookHook | None = None  # set by the runner; never pickled

    @property
    def planned_runs(self) -> int:
        """The runs of the search and those the sequential phase has planned so far."""
        return self.spec.total_runs + len(self.extra)

    @property
    def finished(self) -> bool:
        """Has the searcher handed out its last block (the search and any sequential phase
        over)?"""
        return len(self.configs) >= self.spec.trials and not self.queue and \
            self.sequential_done

    # -- Tune API --

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.queue:
            k = len(self.configs)
            if k < self.spec.trials:
                gate = k - self.spec.pending
                if gate >= 0 and not self.configs[gate].told:
                    return self._wait()  # keeps the sampler's history deterministic
                self._ask(k)
            elif not self._next_look():
                return Searcher.FINISHED
            if not self.queue:
                return self._wait()
        block = self.queue.pop(0)
        self.trial_runs[trial_id] = block
        self.live.add(trial_id)
        return {"block": block}

    def _wait(self) -> str | None:
        """None (Tune asks again later) while a trial runs whose end may move things on;
        with none running, FINISHED: runs that stopped before their end (interrupted) keep
        the study from going on, and its outcome says so (Tune would otherwise wait
        forever)."""
        return None if self.live else Searcher.FINISHED

    def _ask(self, k: int) -> None:
        """Ask Optuna for configuration k and queue its blocks."""
        # A sampler seeded by (seed, k): the proposal for configuration k depends only on
        # the seed, k and the history, also across a resume in a new process.
        self.study.sampler = make_sampler(self.spec, k)
        trial = self.study.ask()
        params = define_by_run(self.spec)(trial)
        runs = expand_runs(self.spec, k, params)
        for r in runs:
            r["optuna_trial"] = trial.number
        for key, value in {**self.trial_attrs, **ask_attrs(self.spec, k, runs)}.items():
            trial.set_user_attr(key, value)
        self.configs.append(ConfigState(k, params, trial.number, runs))
        self.queue.extend(blocks_of(runs, self.seeds_per_block))
        self._tell_ready()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna is told one value per configuration, at its end (see _tell_ready).
        # Kept for a trial that errors: Tune then completes it without a result.
        self.last[trial_id] = result

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self.trial_runs:
            return
        self.live.discard(trial_id)
        block = self.trial_runs[trial_id]
        last = self.last.pop(trial_id, None)
        records = _records(result or last)
        for run in block:
            rec = records.get(run["run_key"], {})
            status = rec.get("status")
            if status in USABLE:  # ended on its own (a block says completed at the end only)
                self._ended(run, rec, status)
            elif trial_id in self.pruned_trials:
                self._ended(run, rec, RunStatus.PRUNED)
            elif status == RunStatus.FAILED or error:
                self._ended(run, rec, RunStatus.FAILED)
            # else: stopped before its end (interrupted): it runs again on resume
        self._tell_ready()

    def _ended(self, run: Mapping[str, Any], rec: Mapping[str, Any], status: str) -> None:
        """Run `run` ended with `status`: its value goes to its configuration (search runs
        only) and its row to the looks."""
        key = run["run_key"]
        if not run.get("look"):
            cfg = self.configs[run["config"]]
            cfg.values[key] = usable_value(rec, self.spec.metric) \
                if status in USABLE else None
            if status in USABLE:
                cfg.objectives[key] = run_objectives(self.spec, rec)
            if status == RunStatus.PRUNED:
                cfg.pruned.add(key)
        vm = self.spec.verdict_metric
        self.rows[key] = {
            "run_key": key, "config": run["config"], "seed": run["seed"],
            "level": run["level"], "look": int(run.get("look") or 0), "status": str(status),
            vm: rec.get(vm), **{f"param.{b}": run.get(b) for b in self.spec.verdict_by}}
        self.outstanding.discard(key)

    def _next_look(self) -> bool:
        """After the search: look once every planned run has ended, and queue the runs the
        look adds. False when there is nothing more to run."""
        if self.sequential_done:
            return False
        if self.outstanding or not all(c.complete for c in self.configs):
            return True  # wait for the runs that are out
        path = follow(self.rows.values(), self.spec)
        lines = look_lines(path, self.spec, since=self.looks_shown)
        self.looks_shown = path.rounds
        self._queue_look(path)
        if self.on_look is not None:
            self.on_look(lines, path, self.planned_runs)
        return not self.sequential_done

    def _queue_look(self, path: LookPath) -> None:
        """Queue the runs `path` waits for (existing configurations, new seeds), in blocks
        of whole pairs of one configuration; or end the sequential phase."""
        self.extra.update(r["run_key"] for r in path.added)
        if path.finished:
            self.sequential_done = True
            return
        by_config: dict[int, set[int]] = {}
        for r in path.pending:
            by_config.setdefault(r["config"], set()).add(r["seed"])
        pending = {r["run_key"]: r["look"] for r in path.pending}
        for k, seeds in sorted(by_config.items()):
            cfg = self.configs[k]
            runs = [r for r in expand_runs(self.spec, k, cfg.params, seeds=sorted(seeds))
                    if r["run_key"] in pending]
            for r in runs:
                r["optuna_trial"] = cfg.optuna_number
                r["look"] = pending[r["run_key"]]
            self.queue.extend(blocks_of(runs, self.seeds_per_block))
            self.outstanding.update(r["run_key"] for r in runs)

    def restore_progress(self, done: dict[str, float | None],
                         pruned: set[str] | None = None,
                         objectives: Mapping[str, tuple[float | None, ...]] | None = None,
                         rows: Iterable[Mapping[str, Any]] = ()) -> int:
        """Rebuild the state of an interrupted execution from its Optuna study and the runs
        that ended (run_key -> value, None for failed; `objectives`: run_key -> its value of
        every objective, for a multi-objective study; `rows`: the same runs as the report
        reads them, with their `look`, for the sequential phase). Returns the runs left to
        run (in the sequential phase: those of the current look).

        Configuration k is Optuna trial number k (a fresh study per execution, asked in
        order). Trials asked but not told are told later by number, never asked again. The
        looks are replayed from the ended runs (``study.search.looks.follow``), so the runs
        of the current look are planned again exactly as the killed driver planned them.
        """
        self.rows = {r["run_key"]: dict(r) for r in rows}
        trials = sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)
        for t in trials:
            k, params = t.number, self._restored_params(t)
            runs = expand_runs(self.spec, k, params)
            for r in runs:
                r["optuna_trial"] = k
            cfg = ConfigState(k, params, k, runs)
            cfg.values = {r["run_key"]: done[r["run_key"]] for r in runs
                          if r["run_key"] in done}
            cfg.pruned = {r["run_key"] for r in runs if r["run_key"] in (pruned or set())}
            cfg.objectives = {r["run_key"]: objectives[r["run_key"]] for r in runs
                              if r["run_key"] in (objectives or {})}
            if t.state.is_finished():  # t.values: one per objective, None unless complete
                cfg.told, cfg.value = True, t.values[0] if t.values else None
                cfg.means = list(t.values) if t.values and self.spec.multi_objective else None
            self.configs.append(cfg)
            self.queue.extend(blocks_of([r for r in runs if r["run_key"] not in cfg.values],
                                       self.seeds_per_block))
        told = [c.told for c in self.configs]
        self.next_to_tell = told.index(False) if False in told else len(told)
        self._tell_ready()
        asked = sum(len(c.runs) - len(c.values) for c in self.configs)
        left = asked + (self.spec.trials - len(self.configs)) * self.spec.runs_per_config
        self.extra = {k for k, r in self.rows.items() if r.get("look")}
        if not self.sequential_done and left == 0:  # the search is over: where are the looks?
            path = follow(self.rows.values(), self.spec)
            self.looks_shown = path.rounds
            self._queue_look(path)
            left = len(self.outstanding)
        return left

    # -- internals --

    def _restored_params(self, t: FrozenTrial) -> dict[str, Any]:
        """The values of configuration `t.number`, as its first ask gave them."""
        if t.state.is_finished():
            return dict(t.params)
        # A driver killed between creating the trial and storing all its values leaves it
        # short: the space, asked again with the sampler of config k and the same history,
        # gives the same values (stored ones are kept).
        self.study.sampler = make_sampler(self.spec, t.number)
        live = reattach_trial(self.study, self.storage, t.number)
        define_by_run(self.spec)(live)
        return dict(live.params)

    def _tell_ready(self) -> None:
        while self.next_to_tell < len(self.configs):
            j = self.next_to_tell
            cfg = self.configs[j]
            asked_enough = (j + self.spec.pending - 1 < len(self.configs)
                            or len(self.configs) >= self.spec.trials)
            if not (cfg.complete and asked_enough):
                return
            cfg.value = None if cfg.pruned else finite_mean(cfg.values.values())
            self._tell(cfg)
            cfg.told = True
            self.next_to_tell += 1

    def _tell(self, cfg: ConfigState) -> None:
        """Tell Optuna how configuration `cfg` ended, by its trial number."""
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id,
                                                                         cfg.optuna_number)
        for key, value in tell_attrs(cfg).items():
            self.storage.set_trial_user_attr(trial_id, key, value)
        if cfg.pruned:  # stopped early by the scheduler: PRUNED, not an early metric
            self.study.tell(cfg.optuna_number, state=TrialState.PRUNED)
        elif cfg.value is None:  # no usable run
            self.study.tell(cfg.optuna_number, state=TrialState.FAIL)
        elif self.spec.multi_objective:  # the mean of every objective
            cfg.means = config_means(cfg.objectives.values())
            self.study.tell(cfg.optuna_number, cfg.means,
                            state=TrialState.COMPLETE if cfg.means else TrialState.FAIL)
        else:
            self.study.tell(cfg.optuna_number, cfg.value, state=TrialState.COMPLETE)

    def __getstate__(self) -> dict[str, Any]:
        """What Tune pickles (its searcher checkpoint, and tuner.pkl with the Tuner): the
        progress, without the Optuna study and storage (the storage URL may hold a password;
        the storage keeps Optuna's state) and with the spec redacted. A resume builds a new
        searcher (runner.resume): nothing reads it back but :meth:`restore`."""
        state = {**self.__dict__, "spec": redact_spec(self.spec)}
        for name in ("study", "storage", "on_look"):
            state.pop(name, None)
        return state

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__getstate__(), fh)

    def restore(self, checkpoint_path: str) -> None:
        """Progress from :meth:`save`; this searcher's Optuna study, storage and spec stay."""
        with open(checkpoint_path, "rb") as fh:
            state = pickle.load(fh)
        state.pop("spec", None)
        state.pop("on_look", None)
        self.__dict__.update(state)


def blocks_of(runs: list[dict[str, Any]], seeds_per_block: int) -> list[list[dict[str, Any]]]:
    """Runs (seeds outer, levels inner) cut into blocks of whole seeds, `seeds_per_block`
    seeds each: a block always holds every level of its seeds (a pair stays together)."""
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], []).append(r)
    seeds = list(by_seed)
    return [[r for s in seeds[i: i + seeds_per_block] for r in by_seed[s]]
            for i in range(0, len(seeds), seeds_per_block)]
