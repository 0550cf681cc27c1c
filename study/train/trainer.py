"""Train and evaluate one model: one run = one configuration, one level, one seed.

The loop keeps data on the device, draws the mini-batch order from its own seeded
generator (so the arms of a pair see the same batches), and never syncs with the device
inside an epoch. A run trains `epochs` passes over the training split or, with `steps`, that
many optimizer steps: then every pass is an epoch as before and the last one stops at the
step count (its metrics are those of its partial pass); each epoch's metrics carry `step`,
the optimizer steps so far. A run whose epoch loss is NaN or infinite, or more than DIVERGED_FACTOR
times the loss of a uniform guess (ln of the number of classes), stops and is `diverged`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.data.load import TensorData
from study.train.models import MaskSource, build_model, model_stats

__all__ = ["RunOutcome", "Trainer", "evaluate", "planned_epochs", "step_count",
           "steps_in_epoch", "steps_per_epoch", "train_run"]

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

    def record(self, train_loss: float, train_acc: float, val_loss: float, val_acc: float,
               test_loss: float, test_acc: float, seconds: float,
               step: int | None = None) -> dict[str, float]:
        """Append one epoch's metrics; `seconds`: the training time this epoch cost this run
        (its share of the time when it trained fused with others); `step`: optimizer steps
        so far (only for runs trained by steps)."""
        self.epochs += 1
        self.train_seconds += seconds
        metrics = {
            "epoch": self.epochs,
            **({} if step is None else {"step": step}),
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "epoch_seconds": seconds,
            "train_seconds": self.train_seconds,
        }
        self.history.append(metrics)
        return metrics


def make_optimizer(params: Iterable[torch.Tensor], run: Mapping[str, Any],
                   ) -> torch.optim.Optimizer:
    if run["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=run["lr"], momentum=run["momentum"],
                               weight_decay=run["weight_decay"])
    if run["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=run["lr"],
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


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one pass over `n` examples (a last batch of one is dropped)."""
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def planned_epochs(run: Mapping[str, Any], n: int) -> int:
    """Epochs the run trains on `n` training examples: `epochs`, or with `steps` the passes
    those steps need (the last one partial)."""
    steps = int(run.get("steps", 0))
    if not steps:
        return int(run["epochs"])
    return -(-steps // max(1, steps_per_epoch(n, int(run["batch_size"]))))


def steps_in_epoch(run: Mapping[str, Any], n: int, done_epochs: int) -> int:
    """Optimizer steps of the epoch after `done_epochs` (all of them without `steps`)."""
    per = steps_per_epoch(n, int(run["batch_size"]))
    steps = int(run.get("steps", 0))
    return per if not steps else max(0, min(per, steps - done_epochs * per))


def step_count(run: Mapping[str, Any], n: int, epochs: int) -> int | None:
    """Optimizer steps after `epochs` epochs of a run trained by steps; None by epochs."""
    if not int(run.get("steps", 0)):
        return None
    return min(int(run["steps"]), epochs * steps_per_epoch(n, int(run["batch_size"])))


EpochHook = Callable[[dict[str, float], RunOutcome, Callable[[], dict[str, Any]]], None]


def is_diverged(train_loss: float, num_classes: int) -> bool:
    return not math.isfinite(train_loss) or \
        train_loss > DIVERGED_FACTOR * math.log(max(num_classes, 2))


class Trainer:
    """One run, trained one epoch at a time (see :func:`train_run`).

    The block executor (``study.train.block``) steps several trainers in lockstep; the fused
    trainer (``study.train.fused.FusedTrainer``) has the same interface for many runs at once:
    `runs`, `outcomes`, `done`, `epochs`, `epoch()`, `state()`.
    """

    fused = False

    def __init__(self, run: Mapping[str, Any], data: TensorData, *,
                 device: str | torch.device = "cpu",
                 start_state: Mapping[str, Any] | None = None) -> None:
        self.runs = [run]
        self.run = run
        self.data = data
        self.model = build_model(run, data.input_shape, data.num_classes)
        stats = model_stats(self.model, data.input_shape)
        self.model.to(device)
        self.opt = make_optimizer(self.model.parameters(), run)
        self.batch_gen = torch.Generator().manual_seed(int(run["seed"]) +
                                                       BATCH_ORDER_SEED_OFFSET)
        self.precision = run.get("precision", "fp32")
        self.dev = data.x_train.device
        # fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(self.dev.type, enabled=self.precision == "fp16")
        self.outcome = RunOutcome(status="completed", epochs=0, params=stats.params,
                                  macs=stats.macs)
        self.outcomes = [self.outcome]
        self.planned = planned_epochs(run, len(data.x_train))
        masks = getattr(self.model, "masks", None)  # dropout's generator (the cnn family)
        self.masks = masks if isinstance(masks, MaskSource) else None
        if start_state is not None:
            if self.masks is not None:
                self.masks.set_state(self.dev, start_state.get("masks"))
            self.model.load_state_dict(start_state["model"])
            self.opt.load_state_dict(start_state["optimizer"])
            self.scaler.load_state_dict(start_state.get("scaler", {}))
            self.batch_gen.set_state(start_state["batch_gen"])
            self.outcome.history = [dict(h) for h in start_state["history"]]
            self.outcome.epochs = int(start_state["epoch"])
            self.outcome.status = start_state.get("status", "completed")
            self.outcome.train_seconds = (self.outcome.history[-1]["train_seconds"]
                                          if self.outcome.history else 0.0)

    @property
    def epochs(self) -> int:
        return self.outcome.epochs

    @property
    def done(self) -> bool:
        return self.outcome.status == "diverged" or self.outcome.epochs >= self.planned

    def state(self) -> dict[str, Any]:
        """The full training state: a checkpoint the trainer continues from exactly."""
        return {"epoch": self.outcome.epochs, "status": self.outcome.status,
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict(), "batch_gen": self.batch_gen.get_state(),
                "masks": None if self.masks is None else self.masks.get_state(),
                "history": list(self.outcome.history)}

    def epoch(self) -> list[dict[str, float]]:
        """Train one epoch, evaluate, and return the epoch's metrics (a list of one)."""
        data, model, opt, scaler, dev = self.data, self.model, self.opt, self.scaler, self.dev
        t0 = time.perf_counter()
        model.train()
        n = len(data.x_train)
        bs = int(self.run["batch_size"])
        order = torch.randperm(n, generator=self.batch_gen).to(dev)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        seen = taken = 0
        limit = steps_in_epoch(self.run, n, self.outcome.epochs)
        for i in range(0, n, bs):
            idx = order[i: i + bs]
            if len(idx) < 2:  # a batch of one breaks BatchNorm; drop it (same for all arms)
                continue
            if taken == limit:  # trained by steps: the last epoch stops at the count
                break
            taken += 1
            xb, yb = data.x_train[idx], data.y_train[idx]
            with autocast(dev, self.precision):
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
        train_acc = correct.item() / max(seen, 1)
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, self.precision)
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, self.precision)
        seconds = time.perf_counter() - t0
        metrics = self.outcome.record(train_loss, train_acc, val_loss, val_acc, test_loss,
                                      test_acc, seconds,
                                      step_count(self.run, n, self.outcome.epochs + 1))
        if is_diverged(train_loss, data.num_classes):
            self.outcome.status = "diverged"
        return [metrics]


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
    trainer = Trainer(run, data, device=device, start_state=start_state)
    while not trainer.done:
        (metrics,) = trainer.epoch()
        if on_epoch is not None:
            on_epoch(metrics, trainer.outcome, trainer.state)
    return trainer.outcome
