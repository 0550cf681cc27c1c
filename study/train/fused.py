"""Fused training: many runs of the same architecture trained as one vectorised model.

The runs' parameters are stacked (``torch.func.stack_module_state``) and one forward pass
(``torch.func.vmap`` over ``functional_call``) computes every model on its own mini-batch:
convolutions become grouped convolutions, BatchNorm keeps per-model batch statistics and
running means. Each model keeps its own seed, initial values, batch order, optimizer state
(the optimizers used here are element-wise, so one optimizer over stacked tensors is exactly
one optimizer per model), metrics and divergence status: the numbers equal those of
separate runs within floating-point tolerance (tests/test_fused.py).

Runs that differ only in knobs that do not change the computation graph fuse: seed, weight
init, bias constants, and bias on/off (a run without a bias gets a zero bias whose gradient
is masked to exactly zero, so it stays zero, as if absent). Runs that differ in anything
else (depth, width, norm, lr, ...) train in separate groups. fp16 runs never fuse (their
loss scaler would skip steps for every model when one overflows), nor do runs with dropout
(their masks come from each run's own generator, which vmap cannot draw from).

On a GPU this turns many small, launch-bound runs into a few large kernels (HFTA, Wang et
al. 2021); on a CPU core the gain is small, since one core is compute-bound either way.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.data.load import TensorData
from study.spec import KNOBS
from study.train.models import build_model, model_stats
from study.train.trainer import (
    BATCH_ORDER_SEED_OFFSET,
    EVAL_BATCH,
    RunOutcome,
    autocast,
    is_diverged,
    make_optimizer,
    planned_epochs,
    step_count,
    steps_in_epoch,
)

__all__ = ["FREE_KNOBS", "FusedTrainer", "fuse_groups", "fuse_key"]

# Knobs that may differ between the runs of one fused group.
FREE_KNOBS = frozenset({"seed", "init", "bias", "bias_init", "fc_bias", "fc_bias_init"})


def fuse_key(run: Mapping[str, Any]) -> tuple | None:
    """Runs with equal keys can train fused; None: this run trains on its own."""
    if run.get("precision", "fp32") == "fp16" or run.get("dropout", 0.0) or \
            run.get("conv_dropout", 0.0):
        return None
    return tuple(sorted((k, repr(v)) for k, v in run.items()
                        if k in KNOBS and k not in FREE_KNOBS))  # not the run's identity


def fuse_groups(runs: Sequence[Mapping[str, Any]], fuse: bool,
                max_models: int = 64) -> list[list[Mapping[str, Any]]]:
    """Split runs into training groups, in the runs' order: fusable runs together (at most
    `max_models` per group), every other run alone."""
    if not fuse:
        return [[r] for r in runs]
    groups: dict[tuple, list[list[Mapping[str, Any]]]] = {}
    order: list[list[Mapping[str, Any]]] = []
    for r in runs:
        key = fuse_key(r)
        if key is None:
            order.append([r])
            continue
        bucket = groups.setdefault(key, [])
        if not bucket or len(bucket[-1]) >= max_models:
            bucket.append([])
            order.append(bucket[-1])
        bucket[-1].append(r)
    return order


class FusedTrainer:
    """Several runs of one architecture, trained one epoch at a time as one model.

    Same interface as :class:`study.train.trainer.Trainer`: `runs`, `outcomes`, `done`, `epochs`,
    `epoch()` (returns each run's metrics, None for a run that has ended), `state()`.
    """

    fused = True

    def __init__(self, runs: Sequence[Mapping[str, Any]], data: TensorData, *,
                 device: str | torch.device = "cpu",
                 start_state: Mapping[str, Any] | None = None) -> None:
        from torch.func import stack_module_state

        keys = {fuse_key(r) for r in runs}
        if len(keys) != 1 or None in keys:
            raise ValueError("runs of a fused group must differ only in "
                             f"{sorted(FREE_KNOBS)} and may not use fp16 or dropout")
        self.runs = list(runs)
        self.data = data
        self.m = len(self.runs)
        self.dev = data.x_train.device
        first = self.runs[0]
        self.precision = first.get("precision", "fp32")
        # Every model is built with biases (the superset structure) and initialised by its
        # own run; weights are drawn identically with or without biases (study.train.models).
        models, outcomes = [], []
        for r in self.runs:
            own = build_model(r, data.input_shape, data.num_classes)
            stats = model_stats(own, data.input_shape)
            outcomes.append(RunOutcome(status="completed", epochs=0, params=stats.params,
                                       macs=stats.macs))
            full = build_model({**r, "bias": True, "fc_bias": True}, data.input_shape,
                               data.num_classes)
            if not r["bias"] or not r["fc_bias"]:
                with torch.no_grad():
                    for mod in full.modules():
                        conv = isinstance(mod, nn.Conv2d)
                        if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None \
                                and not (r["bias"] if conv else r["fc_bias"]):
                            mod.bias.zero_()
            models.append(full.to(self.dev))
        self.outcomes = outcomes
        self.skeleton = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state(models)
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        # 1 where the run has this bias, 0 where it has none (its bias stays exactly 0)
        self.masks: dict[str, torch.Tensor] = {}
        for name, mod in models[0].named_modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None:
                conv = isinstance(mod, nn.Conv2d)
                has = [bool(r["bias"] if conv else r["fc_bias"]) for r in self.runs]
                if not all(has):
                    self.masks[f"{name}.bias" if name else "bias"] = torch.tensor(
                        has, dtype=torch.float32, device=self.dev)
        self.opt = make_optimizer(list(params.values()), first)
        self.gens = [torch.Generator().manual_seed(int(r["seed"]) + BATCH_ORDER_SEED_OFFSET)
                     for r in self.runs]
        self.planned = planned_epochs(first, len(data.x_train))  # the same for every run
        if start_state is not None:
            self._load(start_state)

    # -- state --

    @property
    def epochs(self) -> int:
        return min(o.epochs for o in self.outcomes)

    @property
    def done(self) -> bool:
        return all(self._ended(i) for i in range(self.m))

    def _ended(self, i: int) -> bool:
        o = self.outcomes[i]
        return o.status == "diverged" or o.epochs >= self.planned

    def state(self) -> dict[str, Any]:
        return {"fused": [r["run_key"] for r in self.runs],
                "params": {k: v.detach().clone() for k, v in self.params.items()},
                "buffers": {k: v.detach().clone() for k, v in self.buffers.items()},
                "optimizer": self.opt.state_dict(),
                "batch_gens": [g.get_state() for g in self.gens],
                "outcomes": [{"status": o.status, "epochs": o.epochs,
                              "history": list(o.history), "train_seconds": o.train_seconds}
                             for o in self.outcomes]}

    def _load(self, st: Mapping[str, Any]) -> None:
        if list(st["fused"]) != [r["run_key"] for r in self.runs]:
            raise ValueError("checkpoint of another fused group")
        with torch.no_grad():
            for k, v in st["params"].items():
                self.params[k].copy_(v)
            for k, v in st["buffers"].items():
                self.buffers[k].copy_(v)
        self.opt.load_state_dict(st["optimizer"])
        for g, s in zip(self.gens, st["batch_gens"], strict=True):
            g.set_state(s)
        for o, s in zip(self.outcomes, st["outcomes"], strict=True):
            o.status, o.epochs = s["status"], int(s["epochs"])
            o.history = [dict(h) for h in s["history"]]
            o.train_seconds = float(s["train_seconds"])

    # -- training --

    def _effective(self) -> dict[str, torch.Tensor]:
        return {k: v * self.masks[k].view(-1, *([1] * (v.dim() - 1))) if k in self.masks
                else v for k, v in self.params.items()}

    def _forward(self, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                 x_batched: bool) -> torch.Tensor:
        from torch.func import functional_call, vmap

        def one(p: Any, b: Any, xi: torch.Tensor) -> torch.Tensor:
            return functional_call(self.skeleton, (p, b), (xi,))

        return vmap(one, in_dims=(0, 0, 0 if x_batched else None))(params, self.buffers, x)

    def epoch(self) -> list[dict[str, float] | None]:
        data, dev, m = self.data, self.dev, self.m
        t0 = time.perf_counter()
        alive = [i for i in range(m) if not self._ended(i)]
        alive_t = torch.tensor(alive, device=dev)
        n = len(data.x_train)
        bs = int(self.runs[0]["batch_size"])
        orders = torch.stack([torch.randperm(n, generator=g) for g in self.gens]).to(dev)
        loss_sum = torch.zeros(m, device=dev)
        correct = torch.zeros(m, device=dev, dtype=torch.long)
        seen = taken = 0
        limit = steps_in_epoch(self.runs[0], n, self.outcomes[alive[0]].epochs)
        self.skeleton.train()
        for i in range(0, n, bs):
            idx = orders[:, i: i + bs]
            if idx.shape[1] < 2:  # same rule as a single run
                continue
            if taken == limit:  # trained by steps: the last epoch stops at the count
                break
            taken += 1
            xb, yb = data.x_train[idx], data.y_train[idx]  # [m, b, ...], [m, b]
            with autocast(dev, self.precision):
                logits = self._forward(self._effective(), xb, True)
            losses = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(),
                                     reduction="none").view(m, -1).mean(1)
            self.opt.zero_grad(set_to_none=True)
            # each model's gradient is that of its own loss; ended models get none
            losses.index_select(0, alive_t).sum().backward()
            self.opt.step()
            loss_sum += losses.detach() * idx.shape[1]
            correct += (logits.detach().argmax(2) == yb).sum(1)
            seen += idx.shape[1]
        train_loss = [v / max(seen, 1) for v in loss_sum.tolist()]
        train_acc = [c / max(seen, 1) for c in correct.tolist()]
        val = self._evaluate(data.x_val, data.y_val)
        test = self._evaluate(data.x_test, data.y_test)
        share = (time.perf_counter() - t0) / len(alive)  # each run's share of the time
        out: list[dict[str, float] | None] = [None] * m
        for i in alive:
            o = self.outcomes[i]
            out[i] = o.record(train_loss[i], train_acc[i], val[0][i], val[1][i], test[0][i],
                              test[1][i], share, step_count(self.runs[i], n, o.epochs + 1))
            if is_diverged(train_loss[i], data.num_classes):
                o.status = "diverged"
        return out

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        if len(x) == 0:
            return [math.nan] * self.m, [math.nan] * self.m
        self.skeleton.eval()
        params = self._effective()
        loss = torch.zeros(self.m, device=x.device)
        correct = torch.zeros(self.m, device=x.device, dtype=torch.long)
        for i in range(0, len(x), EVAL_BATCH):
            with autocast(x.device, self.precision):
                out = self._forward(params, x[i: i + EVAL_BATCH], False)  # [m, b, classes]
            t = y[i: i + EVAL_BATCH]
            loss += F.cross_entropy(out.float().flatten(0, 1), t.repeat(self.m),
                                    reduction="none").view(self.m, -1).sum(1)
            correct += (out.argmax(2) == t).sum(1)
        self.skeleton.train()
        return [v / len(x) for v in loss.tolist()], [c / len(x) for c in correct.tolist()]
