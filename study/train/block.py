"""A block: several runs of one configuration trained in one Ray Tune trial, in lockstep.

Every epoch, each unfinished run (or fused group of runs, see ``study.train.fused``) trains one
epoch; then the block reports every run's latest metrics at once. So the runs of a pair stay
together (same node, stopped together by ASHA on the block's mean), Tune's per-trial cost
is paid once per block, and fused groups are possible.

A run that raises is retried inside the block from its last checkpoint (`retries` times),
then recorded as failed; the other runs go on. A worker that dies takes the block with it:
Tune retries the block and each run continues from its own checkpoint; runs that had ended
keep their final record and do not train again.

Checkpoints: every `checkpoint_every` epochs, or (None, the default) after an epoch that
ends at least AUTO_CHECKPOINT_SECONDS after the unit's last checkpoint; always when a unit
ends. By time, because a checkpoint after every epoch of a short run costs a noticeable
share of its training, while a worker that dies costs at most about
AUTO_CHECKPOINT_SECONDS of each unit's training, trained again.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from study.data.load import TensorData
from study.records import USABLE, RunStatus, last_line
from study.report.stats import finite_mean

logger = logging.getLogger(__name__)

__all__ = ["AUTO_CHECKPOINT_SECONDS", "BlockRun", "train_block"]

AUTO_CHECKPOINT_SECONDS = 10.0


class BlockRun:
    """What the block knows of one run: its latest record, or the error that ended it."""

    def __init__(self, run: Mapping[str, Any]) -> None:
        self.run = run
        self.key: str = run["run_key"]
        self.history: list[dict[str, float]] = []
        self.status = RunStatus.RUNNING
        self.params: int | None = None
        self.macs: int | None = None
        self.error = ""
        self.attempts = 0
        self.fused = 1  # models in its training unit

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"status": self.status, "epoch": len(self.history),
                               "model_params": self.params, "macs": self.macs,
                               "fused": self.fused}
        if self.history:
            rec.update(self.history[-1])
        if self.error:
            rec["error"] = self.error
            rec["attempts"] = self.attempts
        return rec


Report = Callable[[int, dict[str, dict[str, Any]]], None]
Store = Any  # study.train.checkpoints.CheckpointStore or None


class _Unit:
    """A group of runs that trains together: one run, or a fused group."""

    def __init__(self, group: Sequence[Mapping[str, Any]]) -> None:
        self.group = list(group)
        self.keys = [r["run_key"] for r in group]
        self.key = self.keys[0] if len(group) == 1 else f"{self.keys[0]}+{len(group)}"
        self.trainer: Any = None
        self.restored = False
        self.attempts = 0
        self.dead = False  # failed for good
        self.saved_at = 0.0  # time.monotonic() of its last checkpoint (or of its start)

    def checkpoint_due(self, every: int | None) -> bool:
        """After an epoch: is a checkpoint due (see the module's docstring)?"""
        if self.trainer.done:
            return True  # an ended run keeps its final record across a retry
        if every is None:
            return time.monotonic() - self.saved_at >= AUTO_CHECKPOINT_SECONDS
        return every > 0 and self.trainer.epochs % every == 0


def train_block(runs: Sequence[Mapping[str, Any]], data: TensorData, *, device: Any,
                fuse: bool, report: Report, store: Store = None,
                checkpoint_every: int | None = None, retries: int = 0,
                before_epoch: Callable[[Sequence[str], int, bool], None] | None = None,
                ) -> dict[str, BlockRun]:
    """Train `runs` in lockstep; `report(epoch, {run_key: record})` after every epoch.

    `store` (None: no checkpoints) keeps each unit's checkpoint every `checkpoint_every`
    epochs (None: by time, see the module's docstring). `before_epoch(run_keys, epoch,
    restored)` runs before a unit trains an epoch (fault injection hooks in here). Returns
    every run's final record.
    """
    from study.train.trainer import planned_epochs

    block = _Block(runs, data, device=device, fuse=fuse, store=store, retries=retries,
                   before_epoch=before_epoch)
    reported = False
    last = max(planned_epochs(r, len(data.x_train)) for r in runs)
    for epoch in range(1, last + 1):
        trained = block.train_epoch(epoch)
        if trained:
            report(epoch, block.records())
            reported = True
        # after the report: a worker death in between repeats an epoch (logged once),
        # never skips one
        block.checkpoint(trained, checkpoint_every)
        if all(b.status != RunStatus.RUNNING for b in block.state.values()):
            break
    if not reported:  # a retried block whose runs had all ended: their final records
        report(max(len(b.history) for b in block.state.values()), block.records())
    block.clear_checkpoints()
    return block.state


class _Block:
    """The runs of one Tune trial, their units (single runs or fused groups), and what
    happens to a unit that raises: a fused group is split into its runs, a single run is
    retried from its checkpoint `retries` times and then fails."""

    def __init__(self, runs: Sequence[Mapping[str, Any]], data: TensorData, *, device: Any,
                 fuse: bool, store: Store, retries: int,
                 before_epoch: Callable[[Sequence[str], int, bool], None] | None) -> None:
        from study.train.fused import fuse_groups

        self.data, self.device, self.store, self.retries = data, device, store, retries
        self.before_epoch = before_epoch
        self.state = {r["run_key"]: BlockRun(r) for r in runs}
        self.units = [_Unit(g) for g in fuse_groups(runs, fuse)]
        # every key a checkpoint may have been saved as
        self.checkpoint_keys = {u.key for u in self.units}

    def records(self) -> dict[str, dict[str, Any]]:
        return {k: b.record() for k, b in self.state.items()}

    def train_epoch(self, epoch: int) -> list[_Unit]:
        """Bring every live unit to `epoch`; the units that trained."""
        trained: list[_Unit] = []
        i = 0
        while i < len(self.units):
            u = self.units[i]
            if u.dead:
                i += 1
                continue
            try:
                if self._train_to(u, epoch):
                    trained.append(u)
            except Exception:  # recorded on the run (status failed, error) or retried
                if not self._failed(i, u, traceback.format_exc()):
                    continue  # the same place holds the split group or the retry
            i += 1
        return trained

    def _failed(self, i: int, u: _Unit, error: str) -> bool:
        """Handle a unit that raised; False when position `i` must be trained again."""
        u.trainer = None
        if len(u.group) > 1:  # isolate the fault: its runs go on alone, afresh
            logger.warning("fused group %s raised; its runs go on one by one: %s", u.key,
                           last_line(error))
            self.units[i: i + 1] = [_Unit([r]) for r in u.group]
            self.checkpoint_keys.update(r["run_key"] for r in u.group)
            if self.store is not None:
                self.store.delete(u.key)
            return False
        u.attempts += 1
        if u.attempts <= self.retries:
            return False  # again, from its last checkpoint
        u.dead = True
        b = self.state[u.keys[0]]
        b.status, b.error, b.attempts = RunStatus.FAILED, error, u.attempts
        return True

    def _start(self, u: _Unit) -> None:
        from study.train.fused import FusedTrainer
        from study.train.trainer import Trainer

        saved = self.store.load(u.key, map_location=self.device) if self.store else None
        u.restored = saved is not None
        u.saved_at = time.monotonic()
        u.trainer = (FusedTrainer(u.group, self.data, device=self.device, start_state=saved)
                     if len(u.group) > 1 else
                     Trainer(u.group[0], self.data, device=self.device, start_state=saved))
        self._sync(u)

    def _sync(self, u: _Unit) -> None:
        for r, o in zip(u.group, u.trainer.outcomes, strict=True):
            b = self.state[r["run_key"]]
            b.history, b.params, b.macs = o.history, o.params, o.macs
            b.fused = len(u.group)
            b.status = RunStatus.DIVERGED if o.status == RunStatus.DIVERGED else (
                RunStatus.COMPLETED if o.epochs >= u.trainer.planned else RunStatus.RUNNING)

    def _train_to(self, u: _Unit, epoch: int) -> bool:
        """Bring the unit to `epoch`; False if nothing was left to train."""
        if u.trainer is None:
            self._start(u)
        if u.trainer.done or u.trainer.epochs >= epoch:
            return False
        while not u.trainer.done and u.trainer.epochs < epoch:
            if self.before_epoch is not None:
                self.before_epoch(u.keys, u.trainer.epochs + 1, u.restored)
            u.trainer.epoch()
        self._sync(u)
        return True

    def checkpoint(self, trained: Sequence[_Unit], every: int | None) -> None:
        """Save the trained units whose checkpoint is due."""
        for u in trained if self.store is not None else ():
            if u.checkpoint_due(every):
                self.store.save(u.key, u.trainer.state())
                u.saved_at = time.monotonic()

    def clear_checkpoints(self) -> None:
        if self.store is not None:
            for key in self.checkpoint_keys:
                self.store.delete(key)


def block_value(records: Mapping[str, Mapping[str, Any]], metric: str) -> float:
    """The block's metric for schedulers: the mean over its runs' latest finite values."""
    mean = finite_mean(r.get(metric) for r in records.values()
                       if r.get("status") in (RunStatus.RUNNING, *USABLE))
    return math.nan if mean is None else mean
