"""Benchmark: the same training runs as (a) a plain loop, (b) a hand-written Ray Tune +
OptunaSearch + MLflowLoggerCallback script, (c) `study run`, at 1 and 2 runs at a time.

For each: wall seconds (the whole command, process start to exit), the sum of training
seconds (as each run measured it), efficiency = sum of training seconds / (wall x slots),
overhead per run = (wall - training seconds / slots) / runs, and the peak memory of the
process tree; each as median (min-max) over --reps repetitions. Results go to
results/bench.csv and results/bench.md. `--verdicts` also times each bundled study.

    python benchmarks/bench.py --reps 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
STUDY = str(Path(PY).parent / "study")


def measure(cmds: list[list[str]], cwd: Path, extra_env: dict[str, str] | None = None,
            ) -> tuple[float, float]:
    """Run commands in parallel; (wall seconds, peak RSS MiB of all their process trees)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",
                                                             "MLFLOW_TRACKING_URI")}
    env.update(extra_env or {})
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(cwd / f"err{i}.log", "w"))  # noqa: SIM115
             for i, c in enumerate(cmds)]
    peak = 0.0
    while any(p.poll() is None for p in procs):
        rss = 0
        for p in procs:
            try:
                parent = psutil.Process(p.pid)
                for q in [parent, *parent.children(recursive=True)]:
                    rss += q.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, rss / 2**20)
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    for i, p in enumerate(procs):
        if p.returncode != 0:
            raise RuntimeError(f"{cmds[i]} failed: {(cwd / f'err{i}.log').read_text()[-2000:]}")
    return wall, peak


def run_loop(slots: int, cwd: Path) -> tuple[float, float, list[float]]:
    outs = [cwd / f"loop{i}.json" for i in range(slots)]
    cmds = [[PY, str(HERE / "loop.py"), "--shard", f"{i}/{slots}", "--out", str(o)]
            for i, o in enumerate(outs)]
    wall, peak = measure(cmds, cwd)
    secs = [r["train_seconds"] for o in outs for r in json.loads(o.read_text())]
    return wall, peak, secs


def run_tune(slots: int, cwd: Path) -> tuple[float, float, list[float]]:
    out = cwd / "tune.json"
    wall, peak = measure([[PY, str(HERE / "tune_baseline.py"), "--concurrency", str(slots),
                           "--out", str(out)]], cwd)
    return wall, peak, [r["train_seconds"] for r in json.loads(out.read_text())]


def run_study(slots: int, cwd: Path, extra_env: dict[str, str] | None = None,
              ) -> tuple[float, float, list[float]]:
    from mlflow.tracking import MlflowClient

    wall, peak = measure([[STUDY, "run", str(HERE / "bench_spec.yaml"), "--quiet", "--set",
                           f"execution.concurrency={slots}"]], cwd, extra_env)
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    exp = client.get_experiment_by_name("bench")
    kids = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if "mlflow.parentRunId" in r.data.tags]
    sys.path.insert(0, str(HERE))
    from common import bench_runs

    expected = {r["run_key"] for r in bench_runs()}
    got = {k.data.tags["study.run_key"] for k in kids}
    if got != expected:
        raise RuntimeError("study ran other runs than the benchmark's list")
    return wall, peak, [k.data.metrics["train_seconds"] for k in kids]


def run_study_ray_up(slots: int, cwd: Path) -> tuple[float, float, list[float]]:
    """`study run` joining a Ray instance that is already running (`ray start --head` with
    the worker preload, as the README shows for a workstation that keeps Ray up): Ray's own
    start and stop are not timed.
    The instance is this benchmark's own (its own port, temp dir and token) and is stopped
    afterwards; its memory is not counted."""
    import secrets
    import signal
    import socket

    from study.tune.ray_adapter import WORKER_PRELOAD

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_ADDRESS": f"127.0.0.1:{port}"}
    full = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **env}
    head = subprocess.Popen(
        [str(Path(PY).parent / "ray"), "start", "--head", "--block", f"--port={port}",
         f"--num-cpus={os.cpu_count()}", "--include-dashboard=false",
         "--system-config=" + json.dumps({"preload_python_modules": WORKER_PRELOAD}),
         f"--temp-dir=/tmp/ray-bench-{secrets.token_hex(3)}"],
        env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        up = [PY, "-c", "import ray; ray.init(logging_level='ERROR'); ray.shutdown()"]
        for _ in range(60):
            if subprocess.run(up, env=full, capture_output=True).returncode == 0:
                break
            time.sleep(1)
        else:
            raise RuntimeError("the benchmark's Ray instance did not come up")
        return run_study(slots, cwd, env)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


APPROACHES = {"loop": run_loop, "tune+optuna+mlflow (hand-written)": run_tune,
              "study run": run_study, "study run, Ray already up": run_study_ray_up}
KEYS = dict(zip(["loop", "tune", "study", "study-up"], APPROACHES, strict=True))  # --only


ORDER = {name: i for i, name in enumerate(APPROACHES)}


def _number(text: str) -> float | int | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def fmt(xs: list[float], digits: int = 2) -> str:
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def paired_ratios(rows: list[dict]) -> None:
    """Add, to each row measured alongside a loop row (same repetition, same slots), its
    wall and mean training seconds per run as multiples of that loop row's."""
    loops = {(r["slots"], r["rep"]): r for r in rows if r["approach"] == KEYS["loop"]}
    for r in rows:
        base = loops.get((r["slots"], r["rep"]))
        if base is not None and not r.get("kept"):
            r["wall_vs_loop"] = r["wall_s"] / base["wall_s"]
            r["train_vs_loop"] = r["mean_run_train_s"] / base["mean_run_train_s"]


def table(rows: list[dict], reps: int) -> list[str]:
    """The Markdown table: per approach and slots, each column's median (min-max)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["approach"], r["slots"]), []).append(r)
    lines = [f"n = {reps} repetitions each, interleaved; median (min-max). Machine: "
             f"{os.cpu_count()} cores. x loop: wall and training seconds per run as "
             "multiples of the loop's in the same repetition.", "",
             "| approach | runs at a time | wall s | wall x loop | sum of training s | "
             "efficiency | overhead per run s | mean training s per run | training x loop "
             "| peak memory MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, slots), rs in groups.items():

        def g(k: str, d: int = 2, rs: list[dict] = rs) -> str:
            xs = [r[k] for r in rs if k in r]
            return fmt(xs, d) if xs else "-"

        if rs[0].get("kept"):
            name += " (kept from an earlier run)"
        lines.append(f"| {name} | {slots} | {g('wall_s', 1)} | {g('wall_vs_loop', 3)} | "
                     f"{g('train_s', 1)} | {g('efficiency')} | {g('overhead_per_run_s')} | "
                     f"{g('mean_run_train_s')} | {g('train_vs_loop', 3)} | "
                     f"{g('peak_rss_mib', 0)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", nargs="+", choices=list(KEYS), default=list(KEYS))
    ap.add_argument("--verdicts", action="store_true", help="also time the bundled studies")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--keep", action="store_true",
                    help="keep the rows of approaches not run now from OUT/bench.csv")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    # Repetitions outermost: each repetition runs every approach once, back to back, so the
    # machine's drift (several seconds within an hour here) hits all of them alike and the
    # ratios to the loop of the same repetition cancel it (see paired_ratios).
    for rep in range(a.reps):
        for slots in a.slots:
            for short in a.only:
                name = KEYS[short]
                with tempfile.TemporaryDirectory() as tmp:
                    wall, peak, secs = APPROACHES[name](slots, Path(tmp))
                n, train = len(secs), sum(secs)
                row = {"approach": name, "slots": slots, "rep": rep, "runs": n,
                       "wall_s": wall, "train_s": train, "efficiency": train / (wall * slots),
                       "overhead_per_run_s": (wall - train / slots) / n,
                       "mean_run_train_s": train / n, "peak_rss_mib": peak}
                rows.append(row)
                print(json.dumps(row), flush=True)
    paired_ratios(rows)
    if a.verdicts:
        for spec in sorted((ROOT / "search_spaces").glob("*.yaml")):
            for rep in range(a.reps):
                with tempfile.TemporaryDirectory() as tmp:
                    wall, peak = measure([[STUDY, "run", str(spec), "--quiet"]], Path(tmp))
                rows.append({"approach": f"time to verdict: {spec.stem}", "slots": 2,
                             "rep": rep, "wall_s": wall, "peak_rss_mib": peak})
                print(json.dumps(rows[-1]), flush=True)
    if a.keep and (out / "bench.csv").exists():
        ran = {(r["approach"], r["slots"]) for r in rows}
        with open(out / "bench.csv", newline="") as fh:
            old = [{k: _number(v) for k, v in r.items() if v != ""}
                   for r in csv.DictReader(fh)]
        kept = [r for r in old if (r["approach"], r["slots"]) not in ran]
        for r in kept:
            r["kept"] = 1
        rows = kept + rows
    rows.sort(key=lambda r: (r["slots"], ORDER.get(r["approach"], 9), r["rep"]))
    with open(out / "bench.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    lines = table(rows, a.reps)
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
