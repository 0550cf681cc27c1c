"""The sequential phase: spec, looks, the block searcher adding paired seeds, resume, the
report, and a real study killed (SIGKILL) in the phase and resumed.

The pure parts run the searcher as Tune would (suggest, complete) with deterministic
values; the end-to-end test runs real Ray, Optuna on SQLite, MLflow on SQLite and PyTorch.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import optuna
import pytest
import yaml

from study.report.build import ReportInput, build_report, rebuild, verdict_table
from study.search.looks import follow
from study.search.searcher import BlockSearcher
from study.spec import SpecError, parse_spec
from study.tracking.read import runs_from_mlflow
from tests.conftest import tiny_spec

MARGIN = 0.02  # 2 pp


def seq_spec(**over) -> object:
    raw = tiny_spec(
        name="seq", repeats=2, model={"name": "cnn", "width": 4},
        space={"depth": {"int": [1, 3]}, "norm": {"choice": ["batch", "none"]}},
        search={"sampler": "random", "trials": 4, "seed": 0},
        verdict={"by": "norm", "equivalence_margin": MARGIN,
                 "sequential": {"max_pairs": 20, "looks": 3}})
    raw.update(over)
    return parse_spec(raw)


def value(run: dict) -> float:
    """Deterministic per run: with BN no effect; without BN bias=false is 1 pp better;
    a spread of ±1 pp from the run key."""
    noise = (zlib.crc32(run["run_key"].encode()) / 2**32 - 0.5) * 0.02
    base = 0.9 if run["norm"] == "batch" else 0.7
    return base + noise + (0.01 if run["norm"] == "none" and not run["bias"] else 0.0)


def result(block: list[dict], status: str = "completed") -> dict:
    return {"runs": {r["run_key"]: {"status": status, "val_accuracy": value(r),
                                    "test_accuracy": value(r)} for r in block}}


def play(searcher: BlockSearcher, slots: int = 2, stop_after: int | None = None,
         ) -> tuple[list[str], dict[str, list[dict]]]:
    """Play Tune until FINISHED (or `stop_after` completed trials): the run keys handed
    out, in order, and the trials still running when it stopped."""
    handed: list[str] = []
    running: dict[str, list[dict]] = {}
    n = done = 0
    while True:
        while len(running) < slots:
            got = searcher.suggest(f"t{len(handed)}-{n}")
            if got == "FINISHED" or got is None:
                break
            running[f"t{len(handed)}-{n}"] = got["block"]
            handed += [r["run_key"] for r in got["block"]]
            n += 1
        if got == "FINISHED" and not running:
            return handed, running
        assert running, "the searcher stalled with nothing running"
        if stop_after is not None and done >= stop_after:
            return handed, running
        tid = sorted(running)[0]
        searcher.on_trial_complete(tid, result(running.pop(tid)))
        done += 1


def new_searcher(s, url: str, name: str = "seq") -> BlockSearcher:
    return BlockSearcher(s, storage=optuna.storages.RDBStorage(url), study_name=name)


# -- spec --------------------------------------------------------------------------------


def test_the_spec_carries_a_nested_sequential_section():
    s = seq_spec()
    assert s.sequential.max_pairs == 20 and s.sequential.looks == 3
    assert s.sequential.spending == "obrien_fleming" and s.sequential.min_pairs == 5
    assert "sequential: up to 20 pairs per comparison" in s.summary()
    # 2 norm groups + the overall comparison, each up to 20 pairs of 2 runs
    assert s.most_runs == s.total_runs + 20 * 3 * 2
    assert seq_spec(verdict={"sequential": {"max_pairs": 9, "spending": "pocock"}}
                    ).sequential.spending == "pocock"
    assert parse_spec(tiny_spec()).sequential is None


@pytest.mark.parametrize(("sequential", "field", "says"), [
    ({"looks": 3}, "verdict.sequential.max_pairs", "missing required field"),
    ({"max_pairs": "many"}, "verdict.sequential.max_pairs", "integer"),
    ({"max_pairs": 1}, "verdict.sequential.max_pairs", "from 2"),
    ({"max_pairs": 10**9}, "verdict.sequential.max_pairs", "10000"),
    ({"max_pairs": 4}, "verdict.sequential.max_pairs", "at least min_pairs (5)"),
    ({"max_pairs": 20, "looks": 0}, "verdict.sequential.looks", "from 1"),
    ({"max_pairs": 8, "looks": 5}, "verdict.sequential.looks", "at most max_pairs"),
    ({"max_pairs": 20, "spending": "haybittle"}, "verdict.sequential.spending", "pocock"),
    ({"max_pairs": 20, "looks": True}, "verdict.sequential.looks", "integer"),
    ({"max_pairs": 20, "extra": 1}, "verdict.sequential.extra", "max_pairs"),
    ([20, 3], "verdict.sequential", "mapping"),
    ("yes", "verdict.sequential", "mapping"),
])
def test_bad_sequential_sections_are_refused_by_name(tmp_path, sequential, field, says):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(verdict={"sequential": sequential})))
    from study.spec import load_spec

    with pytest.raises(SpecError) as ei:
        load_spec(path)
    msg = str(ei.value)
    assert msg.startswith(str(path)) and f"`{field}`" in msg and says in msg, msg


@pytest.mark.parametrize(("over", "field"), [
    ({"search": {"sampler": "random", "trials": 2, "scheduler": "asha"}}, "search.scheduler"),
    ({"verdict": {"alpha": 0.5, "sequential": {"max_pairs": 20}}}, "verdict.alpha"),
    ({"verdict": {"sequential": {"max_pairs": 10_000}}, "repeats": 1000,
      "search": {"sampler": "random", "trials": 45}}, "verdict.sequential.max_pairs"),
])
def test_sequential_needs_fifo_alpha_below_half_and_bounded_runs(over, field):
    raw = tiny_spec(verdict={"sequential": {"max_pairs": 20}})
    raw.update(over)
    with pytest.raises(SpecError, match=f"`{field}`"):
        parse_spec(raw)


def test_sequential_needs_a_comparison():
    raw = tiny_spec(verdict={"sequential": {"max_pairs": 20}})
    del raw["compare"]
    with pytest.raises(SpecError, match="`verdict`"):
        parse_spec(raw)


# -- the searcher ------------------------------------------------------------------------


def test_looks_add_paired_seeds_until_every_comparison_is_settled(tmp_path):
    s = seq_spec()
    searcher = new_searcher(s, f"sqlite:///{tmp_path}/o.db")
    seen: list[tuple[int, list[str], int]] = []
    searcher.on_look = lambda lines, path, planned: seen.append((path.rounds, lines, planned))
    handed, _ = play(searcher)

    assert len(handed) == len(set(handed)) == searcher.planned_runs > s.total_runs
    path = follow(searcher.rows.values(), s)
    assert path.finished and not any(c.open for c in path.comparisons)
    assert {c.group: c.decision for c in path.comparisons} == {
        "all": "equivalent", "norm=batch": "equivalent", "norm=none": "equivalent"}
    # a look per round, each printed once, with n, interval, boundary and decision
    assert [r for r, _, _ in seen] == list(range(1, path.rounds + 1)) and path.rounds >= 2
    assert any("RCI" in ln and "boundary t=" in ln for _, lines, _ in seen for ln in lines)
    assert "sequential phase finished" in seen[-1][1][-1]
    # added runs: existing configurations, new seeds, every level, tagged with their look
    extra = [r for r in searcher.rows.values() if r["look"]]
    search_seeds = set(s.seeds)
    pairs: dict[tuple[int, int], set] = {}
    for r in extra:
        assert r["seed"] not in search_seeds and r["config"] < s.trials
        pairs.setdefault((r["config"], r["seed"]), set()).add(r["level"])
    assert all(levels == {True, False} for levels in pairs.values())
    # Optuna: one trial per configuration, its value the mean over the search runs only
    trials = searcher.study.get_trials()
    assert len(trials) == s.trials
    for cfg in searcher.configs:
        expect = sum(value(r) for r in cfg.runs) / len(cfg.runs)
        assert abs(trials[cfg.optuna_number].value - expect) < 1e-12


def test_a_resume_in_the_sequential_phase_plans_exactly_the_same_runs(tmp_path):
    s = seq_spec()
    straight = new_searcher(s, f"sqlite:///{tmp_path}/a.db")
    everything, _ = play(straight)

    first = new_searcher(s, f"sqlite:///{tmp_path}/b.db")
    # stop with the first look's runs half done: some ended, two trials in flight
    handed, running = play(first, stop_after=len(s.seeds) * s.trials + 3)
    assert first.looks_shown >= 1 and first.outstanding
    ended = dict(first.rows)
    done = {k: r["test_accuracy"] for k, r in ended.items() if not r["look"]}
    lost = [r["run_key"] for b in running.values() for r in b]  # the driver dies

    second = new_searcher(s, f"sqlite:///{tmp_path}/b.db")
    left = second.restore_progress(done, rows=ended.values())
    assert left == len(second.outstanding) >= len(lost)
    after, _ = play(second)
    assert set(lost) <= set(after)  # runs in flight when it died run again, afresh
    assert not set(after) & set(ended)  # an ended run never runs again
    assert set(ended) | set(after) == set(everything)
    assert len(second.study.get_trials()) == s.trials  # no Optuna trial added


def test_the_searcher_pickles_without_its_hook_and_restores(tmp_path):
    s = seq_spec()
    searcher = new_searcher(s, f"sqlite:///{tmp_path}/o.db")
    searcher.on_look = lambda *a: None
    play(searcher, stop_after=len(s.seeds) * s.trials + 2)
    blob = pickle.dumps(searcher)
    state = vars(pickle.loads(blob))
    assert "on_look" not in state and state["outstanding"] == searcher.outstanding
    (tmp_path / "ckpt").write_bytes(b"")
    searcher.save(str(tmp_path / "ckpt"))
    other = new_searcher(s, f"sqlite:///{tmp_path}/o.db")
    other.restore(str(tmp_path / "ckpt"))
    assert other.rows == searcher.rows and other.on_look is None


def rows_for(s, spec_values, failed=()):
    """Ended rows of the search of spec `s` (levels True/False), values by (config, seed,
    level); runs of configurations in `failed` failed."""
    rows = []
    for cfg in range(s.trials):
        for seed in s.seeds:
            for lvl in s.compare_levels:
                rows.append({"run_key": f"c{cfg}-{lvl}-s{seed}", "config": cfg, "seed": seed,
                             "level": lvl, "look": 0, "param.norm": "batch",
                             "status": "failed" if cfg in failed else "completed",
                             "test_accuracy": spec_values(cfg, seed, lvl)})
    return rows


def test_a_comparison_stops_inconclusive_at_its_maximum_or_with_nothing_to_add():
    s = seq_spec(verdict={"equivalence_margin": 0.001,
                          "sequential": {"max_pairs": 12, "looks": 2}})
    rows = rows_for(s, lambda c, seed, lvl: 0.5 + (0.03 if (seed + c) % 2 else -0.03) * lvl)
    while True:
        path = follow(rows, s)
        if path.finished:
            break
        for r in path.pending:  # every added pair: a large spread, no effect
            sign = 1 if r["seed"] % 2 else -1
            rows.append({**r, "status": "completed", "param.norm": "batch",
                         "test_accuracy": 0.5 + sign * 0.03 * r["level"]})
    c = next(c for c in path.comparisons if c.group == "all")
    assert c.decision == "inconclusive" and "maximum" in c.reason
    assert c.steps[-1].look.n == 12 and c.steps[-1].look.final

    # every added pair fails: the comparison still ends, at its maximum, and says why
    rows = rows_for(s, lambda c, seed, lvl: 0.5 + (0.03 if (seed + c) % 2 else -0.03) * lvl)
    rounds = 0
    while not (path := follow(rows, s)).finished:
        rows += [{**r, "status": "failed", "param.norm": "batch"} for r in path.pending]
        rounds += 1
        assert rounds < 50
    c = next(c for c in path.comparisons if c.group == "all")
    assert c.decision == "inconclusive" and "of them with a failed arm" in c.reason

    dead = rows_for(s, lambda *a: 0.5, failed=range(s.trials))
    path = follow(dead, s)
    assert path.finished and all("no configuration" in c.reason for c in path.comparisons)


def test_the_report_shows_the_path_and_the_budget(tmp_path):
    s = seq_spec()
    searcher = new_searcher(s, f"sqlite:///{tmp_path}/o.db")
    play(searcher)
    rows = list(searcher.rows.values())
    rep = build_report(ReportInput(spec=s, execution="seq-x", rows=rows))
    assert {"looks.png", "budget.png"} <= set(rep.images) and "effects.png" not in rep.images
    md = rep.markdown
    assert "## Verdict (sequential)" in md and "stopping reason" in md
    assert "fixed-n pairs, same power" in md and "Lan-DeMets" in md
    assert "Optuna trials are immutable" in md
    assert "## Expected best score against budget" in md and "approximate" not in md
    table = verdict_table(rep, s)
    assert table.startswith("sequential verdict") and "settled at look" in table
    assert {e.verdict for e in rep.effects} == {"equivalent"}
    rep.write(tmp_path / "r")
    looks = json.loads((tmp_path / "r" / "looks.json").read_text())
    assert [c["group"] for c in looks] == ["all", "norm=batch", "norm=none"]
    assert all(c["looks"] and c["verdict"] == "equivalent" for c in looks)


# -- real Ray: killed in the sequential phase, resumed -----------------------------------


def _children(client, name):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.slow
def test_a_study_killed_in_its_sequential_phase_resumes_to_the_same_verdict(workdir):
    """BN makes the bias redundant, so every paired difference is 0: look 1 (2 pairs, no
    look below 5) adds 3 pairs, look 2 says equivalent. One trial at a time; the worker of
    look 1's second pair dies at its second epoch (injected) and Tune starts it again, so
    when the driver is killed (SIGKILL, with its Ray) once look 1's first pair has ended,
    the others have not, however fast the machine."""
    from mlflow.tracking import MlflowClient

    raw = tiny_spec(name="seqkill", search={"sampler": "random", "trials": 2, "seed": 3},
                    train={"epochs": 2, "batch_size": 32},
                    execution={"concurrency": 1, "checkpoint_every": 1},
                    verdict={"equivalence_margin": 0.2,
                             "sequential": {"max_pairs": 6, "looks": 2, "min_pairs": 5}})
    path = workdir / "seqkill.yaml"
    path.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{workdir}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["STUDY_INJECT_FAILURE"] = "seqkill/c000-bias=True-s5@1"  # read by the workers
    driver = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(path)],
                              cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not (workdir / "optuna.db").exists():  # the driver migrates MLflow first
            assert driver.poll() is None and time.monotonic() - t0 < 60
            time.sleep(0.2)
        client = MlflowClient(uri)
        while True:
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() - t0 < 90, "no run of look 1 ended"
            ended = [c for c in _children(client, "seqkill")
                     if c.data.tags.get("study.look") == "1" and c.info.status == "FINISHED"]
            if ended:
                break
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGKILL)
        _, err = driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert "look 1: adding 3 pair(s)" in err, err[-3000:]
    look1_done = {c.data.tags["study.run_key"] for c in _children(client, "seqkill")
                  if c.data.tags.get("study.look") == "1" and c.info.status == "FINISHED"}
    assert 1 <= len(look1_done) < 6  # killed inside the sequential phase

    r = subprocess.run([sys.executable, "-m", "study.cli", "resume", str(path)], cwd=workdir,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(sequential phase: look 1)" in r.stderr and "look 2: bias=false" in r.stderr

    kids = _children(client, "seqkill")
    keys = [k.data.tags["study.run_key"] for k in kids]
    assert len(keys) == len(set(keys)) == 10  # 5 pairs: none lost, none run twice
    assert all(k.info.status == "FINISHED" for k in kids)
    by_pair: dict[tuple[str, str], set[str]] = {}
    for k in kids:
        t = k.data.tags
        by_pair.setdefault((t["study.config"], t["study.seed"]), set()).add(k.data.params["bias"])
        assert t["study.look"] == ("0" if t["study.seed"] == "3" else "1")
    assert all(levels == {"True", "False"} for levels in by_pair.values())
    # new seeds continue each configuration's numbering, round-robin over configurations
    assert sorted(by_pair) == [("0", "3"), ("0", "4"), ("0", "5"), ("1", "3"), ("1", "4")]
    # the verdict recomputed from MLflow's children is the one the study reported
    spec, rows, parent = runs_from_mlflow(uri, "seqkill")
    recomputed = follow(rows, spec)
    assert recomputed.finished and recomputed.rounds == 2
    assert [c.decision for c in recomputed.comparisons] == ["equivalent"]
    tags = parent.data.tags
    assert tags["study.status"] == "finished" and tags["study.verdict.bias.False"] == "equivalent"
    assert tags["study.looks"] == "2" and "equivalent" in tags["study.look.2"]
    ost = optuna.load_study(study_name=tags["study.execution"],
                            storage=f"sqlite:///{workdir}/optuna.db")
    assert [t.state.name for t in ost.get_trials()] == ["COMPLETE", "COMPLETE"]
    looks = Path(client.download_artifacts(parent.info.run_id, "report/looks.json",
                                           str(workdir)))
    assert json.loads(looks.read_text())[0]["verdict"] == "equivalent"
    # `study report EXECUTION` rebuilds the same path from the stores
    rebuilt, _, _ = rebuild(tags["study.execution"], tracking_uri=uri,
                            out_dir=workdir / "rebuilt", log_to_mlflow=False)
    assert rebuilt.looks == json.loads(looks.read_text())
    assert verdict_table(rebuilt, spec) in r.stdout + r.stderr


@pytest.mark.parametrize("tag", ["abc", "-1", "1.5", "9" * 40, "", "1; DROP", "١"])
def test_a_look_tag_read_back_from_a_store_is_checked(tmp_path, tag):
    """A damaged or hostile child tag gives one clear error naming the run, no traceback."""
    from mlflow.tracking import MlflowClient

    from study.tracking.stores import seed_mlflow_store

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    seed_mlflow_store(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("tiny")
    parent = client.create_run(exp, tags={"study.execution": "tiny-20261130-104748-64f6"})
    client.log_text(parent.info.run_id, yaml.safe_dump(tiny_spec()), "spec.yaml")
    child = client.create_run(exp, tags={
        "mlflow.parentRunId": parent.info.run_id, "study.run_key": "c000-bias=True-s3",
        "study.config": "0", "study.seed": "3", "study.look": tag})
    with pytest.raises(SpecError) as ei:
        runs_from_mlflow(uri, "tiny")
    assert f"MLflow run {child.info.run_id}: tag study.look" in str(ei.value)
    assert "Allowed: 0" in str(ei.value)
