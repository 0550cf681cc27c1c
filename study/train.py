"""Train and evaluate one model: one run = one configuration, one level, one seed.

The loop keeps data on the device, draws the mini-batch order from its own seeded
generator (so the arms of a pair see the same batches), and never syncs with the device
inside an epoch. A run whose epoch loss is NaN or infinite, or more than DIVERGED_FACTOR
times the loss of a uniform guess (ln of the number of classes), stops and is `diverged`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.data import TensorData
from study.models import build_model, model_stats

__all__ = ["RunOutcome", "evaluate", "train_run"]

BATCH_ORDER_SEED_OFFSET = 7_919  # batch-order generator seed = run seed + this
EVAL_BATCH = 2048  # examples per forward pass when evaluating
DIVERGED_FACTOR = 100.0  # epoch mean cross-entropy above this x ln(classes): diverged


@dataclass
class RunOutcome:
    status: str  # "completed" or "diverged"
    epochs: int  # epochs run
    params: int
    macs: int
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def make_optimizer(model: nn.Module, run: Mapping[str, Any]) -> torch.optim.Optimizer:
    if run["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=run["lr"], momentum=run["momentum"],
                               weight_decay=run["weight_decay"])
    if run["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=run["lr"],
                                betas=(run["momentum"], 0.999),
                                weight_decay=run["weight_decay"])
    raise ValueError(f"unknown optimizer {run['optimizer']!r}; allowed: sgd, adam")


AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass: bf16 or fp16 autocast, or nothing for fp32."""
    dtype = AMP_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             precision: str = "fp32") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over (x, y) in eval mode."""
    if len(x) == 0:
        return math.nan, math.nan
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), EVAL_BATCH):
        with autocast(x.device, precision):
            out = model(x[i: i + EVAL_BATCH])
        t = y[i: i + EVAL_BATCH]
        loss += F.cross_entropy(out.float(), t, reduction="sum")
        correct += (out.argmax(1) == t).sum()
    model.train(was_training)
    return loss.item() / len(x), correct.item() / len(x)


EpochHook = Callable[[dict[str, float], RunOutcome, Callable[[], dict[str, Any]]], None]


def train_run(run: Mapping[str, Any], data: TensorData, *, device: str | torch.device = "cpu",
              on_epoch: EpochHook | None = None,
              start_state: Mapping[str, Any] | None = None) -> RunOutcome:
    """Train the model `run` describes on `data` (already on `device`).

    `run` holds every knob (see ``study.spec.KNOBS``) plus ``seed``. `on_epoch` receives each
    epoch's metrics as they are measured, the outcome so far (status, sizes) and a function
    that returns the full training state (model, optimizer, batch-order generator, history)
    for a checkpoint. `start_state`, such a state, continues a run after its last epoch:
    on the CPU the numbers are exactly those of an uninterrupted run.
    """
    seed = int(run["seed"])
    model = build_model(run, data.input_shape, data.num_classes)
    stats = model_stats(model, data.input_shape)
    model.to(device)
    opt = make_optimizer(model, run)
    batch_gen = torch.Generator().manual_seed(seed + BATCH_ORDER_SEED_OFFSET)
    n = len(data.x_train)
    bs = int(run["batch_size"])
    out = RunOutcome(status="completed", epochs=0, params=stats.params, macs=stats.macs)
    precision = run.get("precision", "fp32")
    dev = data.x_train.device
    # fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    first = 1
    if start_state is not None:
        model.load_state_dict(start_state["model"])
        opt.load_state_dict(start_state["optimizer"])
        scaler.load_state_dict(start_state.get("scaler", {}))
        batch_gen.set_state(start_state["batch_gen"])
        out.history = [dict(h) for h in start_state["history"]]
        out.epochs = first = int(start_state["epoch"])
        first += 1

    def snapshot() -> dict[str, Any]:
        return {"epoch": out.epochs, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                "batch_gen": batch_gen.get_state(),
                "history": list(out.history)}

    t_start = time.perf_counter() - (out.history[-1]["train_seconds"] if out.history else 0.0)
    model.train()
    for epoch in range(first, int(run["epochs"]) + 1):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=batch_gen).to(data.x_train.device)
        loss_sum = torch.zeros((), device=data.x_train.device)
        correct = torch.zeros((), device=data.x_train.device, dtype=torch.long)
        seen = 0
        for i in range(0, n, bs):
            idx = order[i: i + bs]
            if len(idx) < 2:  # a batch of one breaks BatchNorm; drop it (same for all arms)
                continue
            xb, yb = data.x_train[idx], data.y_train[idx]
            with autocast(dev, precision):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(idx)
        train_loss = loss_sum.item() / max(seen, 1)
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, precision)
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, precision)
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": correct.item() / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "epoch_seconds": time.perf_counter() - t0,
            "train_seconds": time.perf_counter() - t_start,
        }
        out.history.append(metrics)
        out.epochs = epoch
        if not math.isfinite(train_loss) or train_loss > DIVERGED_FACTOR * math.log(
                max(data.num_classes, 2)):
            out.status = "diverged"
        if on_epoch is not None:
            on_epoch(metrics, out, snapshot)
        if out.status == "diverged":
            break
    out.train_seconds = time.perf_counter() - t_start
    return out
