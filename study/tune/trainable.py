"""The worker side of a study: the Ray Tune function trainable that trains one block of
paired runs and reports every run's record once per epoch. The driver side is ``runner``."""

from __future__ import annotations

import os
import socket
from typing import Any

from study.testing import faults
from study.train.checkpoints import CheckpointStore

__all__ = ["trainable"]


def trainable(config: dict[str, Any], splits: Any = None) -> None:
    """The Ray Tune function trainable: one block of runs (``study.train.block``), reported once
    per epoch with every run's latest record.

    `splits`: the dataset, read once by the driver and shared through Ray's object store
    (datasets read from files); None for datasets a worker builds from the spec itself."""
    import ray
    import torch
    from ray import tune

    from study.data.load import load_tensors
    from study.spec import DatasetSpec
    from study.train.block import block_value, train_block

    torch.set_num_threads(int(config["threads"]))
    device = _device(bool(config["gpu"]))
    data = load_tensors(DatasetSpec(**config["dataset"]), device, splits)
    ctx = ray.get_runtime_context()
    where = {"node_id": ctx.get_node_id(), "host": socket.gethostname(),
             "device": str(device)}
    every = config.get("checkpoint_every")  # None: by time (study.train.block)
    # a retried block continues each run after its last checkpointed epoch
    store = CheckpointStore(config["checkpoint_dir"]) if every != 0 else None
    metric = config["metric"]

    def report(epoch: int, records: dict[str, dict[str, Any]]) -> None:
        tune.report({"epoch": epoch, metric: block_value(records, metric), **where,
                     "runs": records})

    train_block(config["block"], data, device=device, fuse=bool(config["fuse"]),
                report=report, store=store, checkpoint_every=every,
                retries=int(config["retries"]),
                before_epoch=faults.before_epoch_hook(str(config["study"])))


def _device(want_gpu: bool) -> str:
    if not want_gpu:
        return "cpu"
    import ray
    import torch

    ids = ray.get_gpu_ids()
    if not ids:
        raise RuntimeError("this run asked for a GPU but Ray assigned it none")
    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        raise RuntimeError(
            f"Ray assigned GPU {ids} on {socket.gethostname()}, but PyTorch sees no CUDA "
            f"device there (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
            f"torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    # Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigned: it is this process' device 0.
    return "cuda:0"
