"""BlockSearcher: configurations -> paired runs; the same configs whatever the timing."""

from __future__ import annotations

import random

import optuna

from study.searcher import BlockSearcher
from study.spec import parse_spec
from tests.conftest import tiny_spec


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


def drive(s, order_seed, slots, storage_url):
    """Play Tune: fill `slots`, finish a random running trial, repeat."""
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
        searcher.on_trial_complete(tid, block_result(s, running.pop(tid)))
    return searcher, optuna.load_study(study_name=name, storage=storage)


def test_runs_are_paired_blocks(tmp_path):
    s = spec()
    searcher, _ = drive(s, 0, 3, f"sqlite:///{tmp_path}/o.db")
    c0 = searcher.configs[0]
    # one Tune trial per pair (both arms of one seed) unless asked for more seeds per trial
    assert [[r["run_key"] for r in b] for b in searcher._blocks(c0.runs)] == [
        ["c000-bias=True-s1", "c000-bias=False-s1"], ["c000-bias=True-s2", "c000-bias=False-s2"]]
    searcher.seeds_per_block = 2
    assert len(searcher._blocks(c0.runs)) == 1
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
