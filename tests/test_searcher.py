"""BlockSearcher: configurations -> paired runs; the same configs whatever the timing."""

from __future__ import annotations

import ast
import math
import pickle
import random
import zlib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study.search.searcher import BlockSearcher, blocks_of, reattach_trial
from study.search.space import define_by_run, expand_runs, make_sampler
from study.spec import load_spec, parse_spec
from tests.conftest import SPECS, tiny_spec


def spec(**over):
    raw = tiny_spec(search={"sampler": "tpe", "trials": 7, "seed": 1, "startup_trials": 2,
                            "pending": 2}, repeats=2)
    raw.update(over)
    return parse_spec(raw)


def fake_metric(run):
    """Deterministic in the config, with a pair/seed component, never the same twice."""
    return 1.0 - (run["depth"] - 2) ** 2 * 0.1 - abs(run["lr"] - 0.03) + 0.001 * run["seed"] \
        + (0.002 if run["bias"] else 0.0)


def block_result(s, block, status="completed", value=fake_metric):
    """What a block trial reports at its end: every run's latest record."""
    return {"runs": {r["run_key"]: {s.metric: value(r), "status": status} for r in block}}


def any_metric(run):
    """Deterministic in everything a run is (not in its Optuna trial), for any spec's knobs."""
    key = repr(sorted((k, repr(v)) for k, v in run.items() if k != "optuna_trial"))
    return zlib.crc32(key.encode()) / 2**32


def drive(s, order_seed, slots, storage_url, *, prune=(), fail=(), value=fake_metric):
    """Play Tune: fill `slots`, finish a random running trial, repeat. The blocks of the
    configurations in `prune` are stopped by the scheduler, those in `fail` raise."""
    storage = optuna.storages.RDBStorage(storage_url)
    name = f"s{order_seed}-{slots}"
    searcher = BlockSearcher(s, storage=storage, study_name=name)
    rng = random.Random(order_seed)
    running: dict[str, dict] = {}
    n = 0
    finished = False
    while not finished or running:
        while not finished and len(running) < slots:
            tid = f"t{n}"
            cfg = searcher.suggest(tid)
            if cfg == "FINISHED":
                finished = True
                break
            if cfg is None:
                break
            running[tid] = cfg["block"]
            n += 1
        if not running:
            assert finished, "the searcher stalled with nothing running"
            break
        tid = rng.choice(sorted(running))
        block = running.pop(tid)
        if block[0]["config"] in prune:
            searcher.pruned_trials.add(tid)
            searcher.on_trial_complete(tid, block_result(s, block, "running", value))
        else:
            status = "failed" if block[0]["config"] in fail else "completed"
            searcher.on_trial_complete(tid, block_result(s, block, status, value))
    return searcher, optuna.load_study(study_name=name, storage=storage)


def test_runs_are_paired_blocks(tmp_path):
    s = spec()
    searcher, _ = drive(s, 0, 3, f"sqlite:///{tmp_path}/o.db")
    c0 = searcher.configs[0]
    # one Tune trial per pair (both arms of one seed) unless asked for more seeds per trial
    assert [[r["run_key"] for r in b] for b in blocks_of(c0.runs, searcher.seeds_per_block)] == [
        ["c000-bias=True-s1", "c000-bias=False-s1"], ["c000-bias=True-s2", "c000-bias=False-s2"]]
    assert len(blocks_of(c0.runs, 2)) == 1
    assert [(r["seed"], r["bias"]) for r in c0.runs] == [(1, True), (1, False), (2, True),
                                                        (2, False)]
    assert {r["pair"] for r in c0.runs} == {"c000-s1", "c000-s2"}
    for r in c0.runs:
        assert r["depth"] == c0.params["depth"] and r["lr"] == c0.params["lr"]
        assert r["width"] == 4 and r["norm"] == "batch"  # fixed knobs


def test_same_configs_whatever_the_completion_order_or_slots(tmp_path):
    s = spec()
    url = f"sqlite:///{tmp_path}/o.db"
    runs = [drive(s, seed, slots, url) for seed, slots in [(0, 1), (1, 3), (2, 8), (3, 2)]]
    proposals = [[c.params for c in searcher.configs] for searcher, _ in runs]
    assert len(proposals[0]) == 7
    assert all(p == proposals[0] for p in proposals[1:])
    # past the 2 random start-up trials TPE is in charge and the history matters
    assert len({repr(p) for p in proposals[0]}) == 7


def test_optuna_is_told_the_mean_over_each_configuration(tmp_path):
    s = spec()
    searcher, study = drive(s, 5, 4, f"sqlite:///{tmp_path}/o.db")
    trials = study.get_trials()
    assert len(trials) == 7 and all(t.state.name == "COMPLETE" for t in trials)
    for cfg in searcher.configs:
        expect = sum(fake_metric(r) for r in cfg.runs) / len(cfg.runs)
        assert abs(trials[cfg.optuna_number].value - expect) < 1e-12
        assert trials[cfg.optuna_number].params == cfg.params


def test_failed_runs_left_out_and_all_failed_is_fail(tmp_path):
    s = spec(search={"sampler": "random", "trials": 2, "seed": 0})
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    searcher = BlockSearcher(s, storage=storage, study_name="f")
    tids = {}
    for i in range(4):  # 2 configurations x 2 seeds, a pair per block
        cfg = searcher.suggest(f"t{i}")
        tids[f"t{i}"] = cfg["block"]
    assert searcher.suggest("t9") == "FINISHED"
    for tid, block in tids.items():
        if block[0]["config"] == 0:
            # seed 0's bias-off arm diverged to NaN; a run of seed 1 raised (failed)
            searcher.on_trial_complete(tid, {"runs": {r["run_key"]: (
                {s.metric: 0.5, "status": "completed"} if r["seed"] != 0 and r["bias"] else
                {"status": "failed", "error": "boom"} if r["seed"] != 0 else
                {s.metric: 0.5, "status": "completed"} if r["bias"] else
                {s.metric: float("nan"), "status": "diverged"}) for r in block}})
        else:  # the worker died for good: the trial errors, with its last records cached
            searcher.on_trial_result(tid, {"runs": {block[0]["run_key"]: {
                s.metric: 0.9, "status": "completed"}}})
            searcher.on_trial_complete(tid, None, error=True)
    study = optuna.load_study(study_name="f", storage=storage)
    t0, t1 = study.get_trials()
    assert t0.state.name == "COMPLETE" and t0.value == 0.5
    assert searcher.configs[0].values["c000-bias=False-s0"] is None
    assert searcher.configs[0].values["c000-bias=False-s1"] is None
    # a run that had ended before its block's worker died keeps its value
    assert t1.state.name == "COMPLETE" and t1.value == 0.9


def test_a_run_stopped_before_its_end_leaves_its_configuration_open(tmp_path):
    s = spec(search={"sampler": "random", "trials": 1, "seed": 0}, repeats=1)
    searcher = BlockSearcher(s, storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db"),
                             study_name="stop")
    (a, b) = searcher.suggest("a")["block"]
    searcher.on_trial_complete("a", {"runs": {a["run_key"]: {s.metric: 0.9,
                                                             "status": "completed"},
                                              b["run_key"]: {s.metric: 0.2,
                                                             "status": "running"}}})
    assert not searcher.configs[0].complete and not searcher.configs[0].told
    assert a["run_key"] in searcher.configs[0].values  # b runs again on resume
    assert b["run_key"] not in searcher.configs[0].values


def test_restore_progress_continues_exactly(tmp_path):
    """Kill the driver half-way (drop the searcher), restore from storage + ended runs: the
    configurations, Optuna trials and told values are those of an uninterrupted search."""
    s = spec()
    url = f"sqlite:///{tmp_path}/o.db"
    straight, straight_study = drive(s, 0, 3, url)

    storage = optuna.storages.RDBStorage(url)
    first = BlockSearcher(s, storage=storage, study_name="killed")
    done, running, n = {}, {}, 0
    rng = random.Random(1)
    while len(done) < 11:  # some configurations told, some asked and half-run
        cfg = first.suggest(f"t{n}")
        if isinstance(cfg, dict):
            running[f"t{n}"] = cfg["block"]
            n += 1
        if len(running) >= 3 or not isinstance(cfg, dict):
            tid = rng.choice(sorted(running))
            block = running.pop(tid)
            first.on_trial_complete(tid, block_result(s, block))
            done.update({r["run_key"]: fake_metric(r) for r in block})
    asked_before = len(first.configs)
    del first  # the driver dies; `running` runs are lost

    second = BlockSearcher(s, storage=optuna.storages.RDBStorage(url), study_name="killed")
    left = second.restore_progress(done)
    assert left == s.total_runs - len(done)
    assert len(second.configs) == asked_before
    m = 0
    finished = False
    while not finished or running:
        running = {}
        while True:
            cfg = second.suggest(f"r{m}")
            if cfg == "FINISHED":
                finished = True
                break
            if cfg is None:
                break
            running[f"r{m}"] = cfg["block"]
            m += len(cfg["block"])
        for tid, block in sorted(running.items()):
            second.on_trial_complete(tid, block_result(s, block))
        if not running and not finished:
            raise AssertionError("stalled")
    assert m == left
    study = optuna.load_study(study_name="killed", storage=url)
    trials = study.get_trials()
    assert len(trials) == s.trials and all(t.state.name == "COMPLETE" for t in trials)
    assert [t.params for t in trials] == [t.params for t in straight_study.get_trials()]
    assert [t.value for t in trials] == [t.value for t in straight_study.get_trials()]


def test_a_trial_created_but_not_filled_is_completed_on_resume(tmp_path):
    """The driver died between Optuna creating config k's trial and storing its values:
    resume fills them in with config k's sampler, so they are the uninterrupted ones."""
    s = spec()
    url = f"sqlite:///{tmp_path}/o.db"
    straight, _ = drive(s, 0, 3, url)
    first = BlockSearcher(s, storage=optuna.storages.RDBStorage(url), study_name="short")
    n = 0  # configs 0 and 1 run and are told, config 2 is asked (pending 2)
    while not (len(first.configs) >= 3 and first.configs[1].told):
        block = first.suggest(f"t{n}")["block"]
        if block[0]["config"] < 2:
            first.on_trial_complete(f"t{n}", block_result(s, block))
        n += 1
    first.study.ask()  # config 3's trial: created, no values (then the kill)
    done = {r["run_key"]: fake_metric(r) for c in first.configs for r in c.runs
            if r["run_key"] in c.values}
    second = BlockSearcher(s, storage=optuna.storages.RDBStorage(url), study_name="short")
    second.restore_progress(done)
    assert len(second.configs) == 4
    assert [c.params for c in second.configs] == [c.params for c in straight.configs[:4]]


def reference_study(s, url, name, *, prune=(), fail=(), value=fake_metric):
    """What BlockSearcher promises, as a plain Optuna ask/tell loop: configuration k is asked
    with the sampler seeded for k once configurations 0..k-P are told, and each is told,
    in order, as soon as the next P-1 are asked (P = search.pending); each trial carries the
    user attributes the README lists for Optuna's dashboard."""
    study = optuna.create_study(storage=url, study_name=name, pruner=optuna.pruners.NopPruner(),
                                direction="minimize" if s.mode == "min" else "maximize")
    asked: list[dict] = []
    storage = optuna.storages.RDBStorage(url)

    def tell(j):
        runs = expand_runs(s, j, asked[j])
        values = {r["run_key"]: None if j in prune or j in fail else value(r) for r in runs}
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(name), j)
        for key, v in {"runs_ended": len(runs), "runs_pruned": len(runs) if j in prune else 0,
                       "runs_with_value": 0 if j in prune or j in fail else len(runs),
                       "runs_without_value": len(runs) if j in fail else 0,
                       "run_values": dict(sorted(values.items()))}.items():
            storage.set_trial_user_attr(trial_id, key, v)
        if j in prune:
            study.tell(j, state=TrialState.PRUNED)
        elif j in fail:
            study.tell(j, state=TrialState.FAIL)
        else:
            study.tell(j, math.fsum(values.values()) / len(values))

    for k in range(s.trials):
        if k >= s.pending:
            tell(k - s.pending)
        study.sampler = make_sampler(s, k)
        trial = study.ask()
        define_by_run(s)(trial)
        asked.append(trial.params)
        runs = expand_runs(s, k, trial.params)
        for key, v in {"config": k, "runs_planned": len(runs),
                       "seeds": sorted({r["seed"] for r in runs}), "compared": s.compare_knob,
                       "levels": list(s.compare_levels)}.items():
            trial.set_user_attr(key, v)
    for j in range(max(0, s.trials - s.pending), s.trials):
        tell(j)
    return study, asked


def stored(url, study):
    """Everything the storage holds about a study, but its name and the times."""
    storage = optuna.storages.RDBStorage(url)
    trials = [(t.number, t.state, t.values, list(t.params.items()), t.distributions,
               t.user_attrs, t.system_attrs, t.intermediate_values)
              for t in study.get_trials()]
    study_id = storage.get_study_id_from_name(study.study_name)
    return (trials, study.directions, study.user_attrs,
            storage.get_study_system_attrs(study_id))


TINY = {"sampler": "tpe", "trials": 7, "seed": 1, "startup_trials": 2}


@pytest.mark.parametrize("search, slots, order, prune, fail", [
    ({**TINY, "pending": 2}, 3, 0, (), ()),
    ({**TINY, "pending": 1}, 1, 1, {1, 4}, {2}),
    ({**TINY, "pending": 4, "trials": 9}, 8, 2, {5}, {0, 6}),
    ({**TINY, "sampler": "random", "pending": 2}, 3, 3, {3}, {1}),
    ({**TINY, "sampler": "qmc", "pending": 3}, 5, 4, {2}, {4}),
])
def test_same_configs_and_storage_as_a_plain_optuna_loop(tmp_path, search, slots, order,
                                                         prune, fail):
    """Same spec + same seed = the same Optuna trials (params in order, numbers, states,
    values, attributes) as the ask/tell loop the searcher's docstring describes, whatever
    the completion order; pruned configurations are PRUNED, failed ones FAIL."""
    s = parse_spec(tiny_spec(search=search, repeats=2))
    url = f"sqlite:///{tmp_path}/o.db"
    searcher, study = drive(s, order, slots, url, prune=prune, fail=fail)
    ref, asked = reference_study(s, url, "reference", prune=prune, fail=fail)
    assert [list(c.params.items()) for c in searcher.configs] == \
        [list(p.items()) for p in asked]
    assert [c.optuna_number for c in searcher.configs] == list(range(s.trials))
    assert stored(url, study) == stored(url, ref)
    states = [t.state for t in study.get_trials()]
    assert [k for k, st in enumerate(states) if st == TrialState.PRUNED] == sorted(prune)
    assert [k for k, st in enumerate(states) if st == TrialState.FAIL] == sorted(fail)


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_bundled_spec_proposes_what_a_plain_optuna_loop_does(tmp_path, path):
    s = load_spec(path, overrides={"search.trials": min(load_spec(path).trials, 8),
                                   "search.startup_trials": 3})  # TPE past its start-up
    url = f"sqlite:///{tmp_path}/o.db"
    searcher, study = drive(s, 0, 4, url, value=any_metric)
    ref, asked = reference_study(s, url, "reference", value=any_metric)
    assert [c.params for c in searcher.configs] == asked
    assert stored(url, study) == stored(url, ref)


def test_reattach_trial_continues_the_same_trial(tmp_path):
    """The one place a dead driver's RUNNING trial is reopened: the handle is that trial
    (number, stored values), what it suggests lands in it, and no trial is added."""
    url = f"sqlite:///{tmp_path}/o.db"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name="r")
    study.tell(study.ask(), 1.0)
    first = study.ask()
    x = first.suggest_float("x", 0.0, 1.0)
    again = reattach_trial(optuna.load_study(study_name="r", storage=url), storage, 1)
    assert again.number == 1 and again.params == {"x": x}
    assert again.suggest_float("x", 0.0, 1.0) == x  # a stored value is kept
    again.suggest_int("y", 1, 3)
    study.tell(1, 2.0)
    (t0, t1) = study.get_trials()
    assert t1.params == {"x": x, "y": again.params["y"]} and t1.value == 2.0
    assert t1.state == TrialState.COMPLETE and len(study.get_trials()) == 2


def test_the_searcher_uses_no_private_name_of_another_object():
    """Only its own `self._x`: Optuna's and Ray's private attributes move between releases."""
    source = Path(__file__).resolve().parent.parent / "study" / "search" / "searcher.py"
    private = [f"line {n.lineno}: .{n.attr}" for n in ast.walk(ast.parse(source.read_text()))
               if isinstance(n, ast.Attribute) and n.attr.startswith("_")
               and not n.attr.startswith("__")
               and not (isinstance(n.value, ast.Name) and n.value.id == "self")]
    assert private == []


def test_a_pickled_searcher_holds_no_study_or_storage(tmp_path):
    """Tune pickles the searcher; the storage (its URL may hold a password) stays out."""
    (tmp_path / "token-7f3a").mkdir()
    url = f"sqlite:///{tmp_path}/token-7f3a/o.db"
    searcher, _ = drive(spec(), 0, 3, url)
    blob = pickle.dumps(searcher)
    assert b"token-7f3a" not in blob
    state = vars(pickle.loads(blob))
    assert len(state["configs"]) == 7 and "study" not in state and "storage" not in state
