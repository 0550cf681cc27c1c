"""Fused training equals separate runs; blocks train runs in lockstep and isolate faults."""

from __future__ import annotations

import math

import pytest
import torch

from study.data.load import load_tensors
from study.spec import KNOBS, DatasetSpec
from study.train import block
from study.train.block import train_block
from study.train.checkpoints import CheckpointStore
from study.train.fused import FusedTrainer, fuse_groups
from study.train.trainer import train_run

BASE = {k.name: k.default for k in KNOBS.values()} | {"depth": 3, "width": 8, "epochs": 3,
                                                       "bias_init": 0.1}
DATA = DatasetSpec("synthetic", samples=300)
TOL = 1e-5
KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
        "test_accuracy")


def runs_of(extra: dict, seeds=(0, 1), levels=(True, False), knob="bias") -> list[dict]:
    return [BASE | extra | {knob: lv, "seed": s, "run_key": f"s{s}-{knob}={lv}"}
            for s in seeds for lv in levels]


def assert_close(a, b, tol=TOL):
    assert [h["epoch"] for h in a] == [h["epoch"] for h in b]
    for ha, hb in zip(a, b, strict=True):
        for k in KEYS:
            assert math.isclose(ha[k], hb[k], abs_tol=tol), (k, ha[k], hb[k])


@pytest.mark.parametrize("extra", [
    {},  # BatchNorm, SGD with momentum
    {"norm": "none", "fc_layers": 1, "fc_bias_init": 0.5},
    {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-3},
    {"residual": True, "branch_init": "zero", "init": "xavier"},
    # the classic net's knobs: kernel, stride, no pooling, flattened head, trunc_normal,
    # per-layer bias constants, training by steps (the last epoch partial)
    {"kernel": 5, "stride": 2, "pool": "none", "flatten": True, "norm": "none",
     "fc_layers": 1, "init": "trunc_normal", "init_std": 0.05, "bias_init": "[0,1,1]",
     "fc_bias_init": "[1,0]", "steps": 20, "batch_size": 32, "momentum": 0.0},
    {"kernel": 1, "pool": "avg", "bias_init": "0,1...", "steps": 9, "batch_size": 64},
])
def test_fused_runs_equal_separate_runs(extra):
    torch.set_num_threads(1)
    data = load_tensors(DATA)
    runs = runs_of(extra)
    separate = [train_run(r, data) for r in runs]
    fused = FusedTrainer(runs, data)
    while not fused.done:
        fused.epoch()
    for s, f in zip(separate, fused.outcomes, strict=True):
        assert (s.status, s.epochs, s.params, s.macs) == (f.status, f.epochs, f.params, f.macs)
        assert_close(s.history, f.history)
    # bias-off models kept their (masked) bias exactly zero
    for name, mask in fused.masks.items():
        assert torch.all(fused.params[name][mask == 0] == 0)


def test_other_free_knobs_fuse_and_a_diverged_model_leaves_the_others_alone():
    data = load_tensors(DATA)
    runs = runs_of({}, levels=(0.0, 1.0), knob="bias_init") + [
        BASE | {"seed": 3, "init": "default", "run_key": "default-init"}]
    groups = fuse_groups(runs + [BASE | {"seed": 0, "lr": 0.5, "run_key": "other-lr"}], True)
    assert [len(g) for g in groups] == [5, 1]  # lr changes the computation: its own group
    blow = [BASE | {"lr": 1e5, "norm": "none", "seed": s, "bias": b,
                    "run_key": f"x{s}{b}"} for s, b in ((0, True), (1, False))]
    ok = [BASE | {"lr": 1e5, "norm": "none", "seed": 2, "run_key": "fine"}]
    separate = [train_run(r, data) for r in blow + ok]
    fused = FusedTrainer(blow + ok, data)
    while not fused.done:
        fused.epoch()
    assert [o.status for o in fused.outcomes] == [o.status for o in separate]
    assert all(o.status == "diverged" for o in fused.outcomes)
    for s, f in zip(separate, fused.outcomes, strict=True):
        assert s.epochs == f.epochs


def test_fused_checkpoint_continues_exactly(tmp_path):
    data = load_tensors(DATA)
    runs = runs_of({"epochs": 4})
    straight = FusedTrainer(runs, data)
    while not straight.done:
        straight.epoch()
    first = FusedTrainer(runs, data)
    first.epoch()
    first.epoch()
    store = CheckpointStore(str(tmp_path))
    store.save("g", first.state())
    again = FusedTrainer(runs, data, start_state=store.load("g"))
    while not again.done:
        again.epoch()
    for a, b in zip(straight.outcomes, again.outcomes, strict=True):
        assert [{k: h[k] for k in KEYS} for h in a.history] == \
            [{k: h[k] for k in KEYS} for h in b.history]


def test_block_trains_in_lockstep_and_fused_equals_unfused(tmp_path):
    data = load_tensors(DATA)
    runs = runs_of({}) + [BASE | {"depth": 2, "seed": 0, "run_key": "shallow"}]
    seen: dict[bool, list] = {True: [], False: []}
    finals = {}
    for fuse in (True, False):
        store = CheckpointStore(str(tmp_path / str(fuse)))
        finals[fuse] = train_block(runs, data, device="cpu", fuse=fuse, store=store,
                                   checkpoint_every=1,
                                   report=lambda e, recs, f=fuse: seen[f].append(
                                       (e, {k: r["epoch"] for k, r in recs.items()})))
        assert not list((tmp_path / str(fuse)).iterdir())  # checkpoints go when it ends
    # one report per epoch, every run one epoch further each time
    assert [e for e, _ in seen[True]] == [1, 2, 3]
    assert all(set(ep.values()) == {e} for e, ep in seen[True])
    assert {b.fused for b in finals[True].values()} == {4, 1}
    for key in finals[True]:
        assert finals[True][key].status == finals[False][key].status == "completed"
        assert_close(finals[True][key].history, finals[False][key].history)


class _Recorder(CheckpointStore):
    def __init__(self, folder: str) -> None:
        super().__init__(folder)
        self.saved: list[tuple[str, int]] = []

    def save(self, key, state):
        self.saved.append((key, state["epoch"]))
        super().save(key, state)


@pytest.mark.parametrize("every, seconds, epochs", [
    (2, 3600.0, [2, 3]),  # every 2 epochs, and when it ends
    (None, 3600.0, [3]),  # by time: none due within the run, so only at its end
    (None, 0.0, [1, 2, 3]),  # by time, with no time between checkpoints: every epoch
])
def test_checkpoint_cadence(tmp_path, monkeypatch, every, seconds, epochs):
    monkeypatch.setattr(block, "AUTO_CHECKPOINT_SECONDS", seconds)
    store = _Recorder(str(tmp_path))
    run = BASE | {"seed": 0, "run_key": "r"}
    final = train_block([run], load_tensors(DATA), device="cpu", fuse=False, store=store,
                        checkpoint_every=every, report=lambda e, r: None)
    assert final["r"].status == "completed" and len(final["r"].history) == 3
    assert store.saved == [("r", e) for e in epochs]
    assert not list(tmp_path.iterdir())  # and the file goes when the block ends


def test_a_failing_run_in_a_fused_block_fails_alone(tmp_path):
    data = load_tensors(DATA)
    runs = runs_of({})
    attempts = []

    def inject(keys, epoch, restored):
        if "s1-bias=False" in keys and epoch == 2:
            attempts.append((len(keys), epoch))
            raise RuntimeError("injected")

    final = train_block(runs, data, device="cpu", fuse=True, report=lambda e, r: None,
                        retries=1, before_epoch=inject, store=CheckpointStore(str(tmp_path)),
                        checkpoint_every=1)
    assert not list(tmp_path.iterdir())  # no checkpoint left behind, the fused one neither
    assert final["s1-bias=False"].status == "failed"
    assert "injected" in final["s1-bias=False"].error
    assert final["s1-bias=False"].record()["attempts"] == 2  # first try and one retry
    # the fused group of 4 raised once (after its epoch-1 checkpoint), then its runs went
    # on alone, afresh; the failing one was retried from its own checkpoint, then failed
    assert attempts == [(4, 2), (1, 2), (1, 2)]
    assert len(final["s1-bias=False"].history) == 1
    others = [b for k, b in final.items() if k != "s1-bias=False"]
    assert all(b.status == "completed" and len(b.history) == 3 for b in others)
    reference = train_run(runs[0], data)
    assert_close(final[runs[0]["run_key"]].history, reference.history)


def test_steps_stop_at_the_count_and_fused_runs_too():
    data = load_tensors(DATA)
    runs = runs_of({"steps": 20, "batch_size": 32})
    assert len(data.x_train) // 32 == 6 and len(data.x_train) % 32 >= 2  # 7 steps a pass
    fused = FusedTrainer(runs, data)
    while not fused.done:
        fused.epoch()
    for o in fused.outcomes:  # 3 epochs: 7 + 7 + 6 steps
        assert [h["step"] for h in o.history] == [7, 14, 20]


def test_dropout_runs_train_alone_and_refuse_to_fuse():
    data = load_tensors(DATA)
    runs = runs_of({"dropout": 0.5, "fc_layers": 1})
    assert [len(g) for g in fuse_groups(runs + runs_of({}), True)] == [1, 1, 1, 1, 4]
    with pytest.raises(ValueError, match="may not use fp16 or dropout"):
        FusedTrainer(runs, data)


def test_a_block_trains_runs_by_steps_to_their_last_partial_epoch():
    data = load_tensors(DATA)
    runs = runs_of({"steps": 20, "batch_size": 32}) + [
        BASE | {"epochs": 2, "batch_size": 32, "seed": 0, "run_key": "by-epochs"}]
    epochs_seen = []
    final = train_block(runs, data, device="cpu", fuse=True, report=lambda e, r:
                        epochs_seen.append(e))
    assert epochs_seen == [1, 2, 3]
    assert final["by-epochs"].status == "completed" and len(final["by-epochs"].history) == 2
    for r in runs[:-1]:
        b = final[r["run_key"]]
        assert b.status == "completed" and b.history[-1]["step"] == 20 and b.fused == 4
