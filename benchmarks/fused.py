"""Runs per hour: M runs of one configuration trained fused (one vmapped model) vs one after
another (the project's own Trainer), on the CPU here or on a GPU.

Every run is a real digits training run (the benchmark study's architecture by default);
the fused runs differ in seed and bias on/off, as the runs of a configuration do. Time is
the whole training (all epochs, evaluation included), median over --reps.

    python benchmarks/fused.py --models 1 2 4 8 16 --reps 3            # CPU
    python benchmarks/fused.py --device cuda --models 1 8 32 64 128    # a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch

    from study.data.load import load_tensors
    from study.spec import KNOBS, DatasetSpec
    from study.train.fused import FusedTrainer
    from study.train.trainer import Trainer

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    data = load_tensors(DatasetSpec("digits"), dev)
    base = {k.name: k.default for k in KNOBS.values()} | {
        "depth": a.depth, "width": a.width, "epochs": a.epochs, "norm": "batch",
        "precision": a.precision}

    def runs(m: int) -> list[dict]:
        return [base | {"seed": i // 2, "bias": i % 2 == 0, "run_key": f"r{i}"}
                for i in range(m)]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(make) -> float:
        sync()
        t0 = time.perf_counter()
        for t in make():
            while not t.done:
                t.epoch()
        sync()
        return time.perf_counter() - t0

    # warm-up: kernels, allocator, autotuning
    timed(lambda: [Trainer(runs(1)[0] | {"epochs": 1}, data, device=dev)])
    timed(lambda: [FusedTrainer([r | {"epochs": 1} for r in runs(2)], data, device=dev)])
    rows = []
    for m in a.models:
        sep = [timed(lambda m=m: [Trainer(r, data, device=dev) for r in runs(m)])
               for _ in range(a.reps)]
        fus = [timed(lambda m=m: [FusedTrainer(runs(m), data, device=dev)] if m > 1 else
                     [Trainer(runs(1)[0], data, device=dev)]) for _ in range(a.reps)]
        row = {"device": str(dev), "models": m, "separate_s": statistics.median(sep),
               "separate_minmax": [min(sep), max(sep)], "fused_s": statistics.median(fus),
               "fused_minmax": [min(fus), max(fus)],
               "separate_runs_per_h": 3600 * m / statistics.median(sep),
               "fused_runs_per_h": 3600 * m / statistics.median(fus)}
        row["speedup"] = row["separate_s"] / row["fused_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [f"device {dev}, digits CNN depth {a.depth} width {a.width} BN, {a.epochs} "
             f"epochs, {a.precision}, {a.threads} thread(s); median (min-max) of {a.reps}", "",
             "| models | separate s | fused s | separate runs/h | fused runs/h | speed-up |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['models']} | {r['separate_s']:.2f} ({r['separate_minmax'][0]:.2f}"
                     f"-{r['separate_minmax'][1]:.2f}) | {r['fused_s']:.2f} "
                     f"({r['fused_minmax'][0]:.2f}-{r['fused_minmax'][1]:.2f}) | "
                     f"{r['separate_runs_per_h']:.0f} | {r['fused_runs_per_h']:.0f} | "
                     f"{r['speedup']:.2f}x |")
    print("\n".join(lines))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
