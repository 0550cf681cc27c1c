"""(b) The usual hand-written way: Ray Tune + OptunaSearch + MLflowLoggerCallback, written
as their documentation shows (a function trainable that loads its data, per-epoch
tune.report, the stock MLflow callback, default Tuner settings). Kept here for the
benchmark, not part of the package."""

from __future__ import annotations

import argparse
import json

from common import bench_runs  # noqa: I001 - sets sys.path for study
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.search.optuna import OptunaSearch

RUNS = bench_runs()


def train_fn(config):
    from study.data.load import load_tensors
    from study.spec import DatasetSpec
    from study.train.trainer import train_run

    run = RUNS[config["run_index"]]
    data = load_tensors(DatasetSpec("digits"))
    train_run(run, data, on_epoch=lambda m, o, s: tune.report(dict(m)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    points = [{"run_index": i} for i in range(len(RUNS))]
    searcher = OptunaSearch(metric="val_accuracy", mode="max", points_to_evaluate=points)
    tuner = tune.Tuner(
        train_fn,
        param_space={"run_index": tune.choice(list(range(len(RUNS))))},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=len(RUNS),
                                    max_concurrent_trials=a.concurrency),
        run_config=tune.RunConfig(
            storage_path=str(__import__("pathlib").Path("ray_results").resolve()),
            callbacks=[MLflowLoggerCallback(tracking_uri="sqlite:///mlflow.db",
                                            experiment_name="bench-tune",
                                            save_artifact=False)]),
    )
    grid = tuner.fit()
    out = [{"run_index": r.config["run_index"], "train_seconds": r.metrics["train_seconds"]}
           for r in grid]
    with open(a.out, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
