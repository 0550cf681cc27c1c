"""(a) The plain Python loop over the project's own training function."""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import bench_runs  # noqa: I001 - sets sys.path for study

from study.data.load import load_tensors
from study.spec import DatasetSpec
from study.train.trainer import train_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shard", default="0/1", help="i/n: every n-th run from the i-th")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    i, n = map(int, a.shard.split("/"))
    torch.set_num_threads(1)
    runs = bench_runs()[i::n]
    data = load_tensors(DatasetSpec("digits"))
    out = []
    for run in runs:
        t0 = time.perf_counter()
        res = train_run(run, data)
        out.append({"run_key": run["run_key"], "train_seconds": res.train_seconds,
                    "wall_seconds": time.perf_counter() - t0,
                    "val_accuracy": res.final["val_accuracy"]})
    with open(a.out, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
