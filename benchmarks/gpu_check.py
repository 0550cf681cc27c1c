"""Run study's training path on a CUDA GPU and measure it (no Ray needed).

Checks: data resident on the GPU; fp32 / bf16 / fp16 (autocast, loss scaling) train;
initial values do not depend on the device; and throughput in runs per hour with several
runs sharing one GPU (separate processes, as Ray places runs with `resources.gpu < 1`),
with the GPU's utilisation sampled by nvidia-smi while they run.

    python benchmarks/gpu_check.py --out results/  [--procs 1 4 8] [--runs-per-proc 4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RUN = {"depth": 4, "width": 16, "epochs": 12, "batch_size": 64, "lr": 0.02}


def base_run(**kw):
    from study.spec import KNOBS

    return {k.name: k.default for k in KNOBS.values()} | {"seed": 0} | RUN | kw


def worker(args):
    """One process = one slot on the GPU: trains `n` runs back to back."""
    rank, n, device = args
    import torch

    torch.set_num_threads(1)
    from study.data.load import load_tensors
    from study.spec import DatasetSpec
    from study.train.trainer import train_run

    data = load_tensors(DatasetSpec("digits"), device)
    secs = []
    for i in range(n):
        out = train_run(base_run(seed=rank * 1000 + i), data, device=device)
        secs.append(out.train_seconds)
    return secs


def sample_util(stop, samples):
    while not stop.is_set():
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                "--format=csv,noheader,nounits"], capture_output=True,
                               text=True, timeout=5)
            u, m = r.stdout.strip().split(",")[:2]
            samples.append((float(u), float(m)))
        except Exception:
            pass
        time.sleep(0.25)


def throughput(procs, runs_per_proc, device):
    stop, samples = threading.Event(), []
    t = threading.Thread(target=sample_util, args=(stop, samples), daemon=True)
    t.start()
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(procs) as pool:
        secs = pool.map(worker, [(r, runs_per_proc, device) for r in range(procs)])
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    runs = procs * runs_per_proc
    train = [s for ss in secs for s in ss]
    util = [u for u, _ in samples]
    return {"procs": procs, "runs": runs, "wall_s": wall, "runs_per_hour": runs * 3600 / wall,
            "median_run_train_s": statistics.median(train),
            "gpu_util_mean": statistics.mean(util) if util else None,
            "gpu_util_max": max(util) if util else None,
            "gpu_mem_max_mib": max((m for _, m in samples), default=None)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_results")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--runs-per-proc", type=int, default=4)
    a = ap.parse_args()
    import torch

    from study.data.load import load_tensors
    from study.spec import DatasetSpec
    from study.train.models import build_model
    from study.train.trainer import train_run

    assert torch.cuda.is_available(), "no CUDA device"
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    data = load_tensors(DatasetSpec("digits"), "cuda")
    report["data_on"] = str(data.x_train.device)
    # initial values do not depend on the device: built on the CPU, then moved
    m_cpu = build_model(base_run(), data.input_shape, data.num_classes)
    m_gpu = build_model(base_run(), data.input_shape, data.num_classes).to("cuda")
    report["init_device_independent"] = all(
        torch.equal(p.detach().cpu(), q.detach().cpu())
        for p, q in zip(m_cpu.parameters(), m_gpu.parameters(), strict=True))
    prec = {}
    for p in ("fp32", "bf16", "fp16"):
        run = base_run(depth=8, width=32, norm="batch", precision=p)
        train_run(run | {"epochs": 1}, data, device="cuda")  # warm-up (kernels, autotune)
        out = train_run(run, data, device="cuda")
        prec[p] = {"status": out.status, "test_accuracy": out.final["test_accuracy"],
                   "train_s": out.train_seconds}
    report["precision"] = prec
    cpu = load_tensors(DatasetSpec("digits"), "cpu")
    torch.set_num_threads(1)
    t = train_run(base_run(), cpu).train_seconds
    g = train_run(base_run(), data, device="cuda").train_seconds
    report["one_run_train_s"] = {"cpu_1_thread": t, "gpu": g}
    report["throughput"] = [throughput(n, a.runs_per_proc, "cuda") for n in a.procs]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
