"""Training: deterministic on CPU, divergence recorded, pairs see the same batches."""

from __future__ import annotations

import contextlib

import torch

from study.data.load import load_tensors
from study.spec import KNOBS, DatasetSpec
from study.train.trainer import train_run

BASE = {k.name: k.default for k in KNOBS.values()} | {"seed": 0, "depth": 3, "width": 8,
                                                       "epochs": 3}
DATA = DatasetSpec("synthetic", samples=300)


def strip_times(history):
    return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]


def test_same_seed_same_numbers_on_cpu():
    torch.set_num_threads(1)
    data = load_tensors(DATA)
    a = train_run(BASE, data)
    b = train_run(BASE, data)
    assert strip_times(a.history) == strip_times(b.history)
    c = train_run(BASE | {"seed": 1}, data)
    assert strip_times(a.history) != strip_times(c.history)
    assert a.status == "completed" and [h["epoch"] for h in a.history] == [1, 2, 3]
    for key in ("train_loss", "train_accuracy", "val_accuracy", "test_accuracy", "val_loss",
                "epoch_seconds", "train_seconds"):
        assert key in a.final


def test_exploding_loss_is_diverged_not_a_crash():
    data = load_tensors(DATA)
    seen = []
    out = train_run(BASE | {"lr": 1e6, "epochs": 5}, data,
                    on_epoch=lambda m, o, snap: seen.append((m["epoch"], o.status)))
    assert out.status == "diverged"
    assert out.epochs < 5 and seen[-1] == (out.epochs, "diverged")
    nan = train_run(BASE | {"lr": float("nan")}, data)
    assert nan.status == "diverged" and nan.epochs == 1


def test_adam_trains():
    data = load_tensors(DATA)
    out = train_run(BASE | {"optimizer": "adam", "lr": 0.01, "epochs": 4}, data)
    assert out.final["train_loss"] < out.history[0]["train_loss"]


def test_batchnorm_pair_bias_is_cancelled_exactly_in_training():
    """With BN after every conv, bias on/off arms see the same batches and compute the same
    normalised activations, so they train to nearly the same numbers; seeds differ more.

    In eval mode BN uses running means, which start at 0 and include the bias: with a
    non-zero bias init the arms differ at evaluation until the running mean has caught up.
    With bias_init 0 the bias gets no gradient and stays 0, and eval matches too."""
    torch.set_num_threads(1)
    data = load_tensors(DATA)
    kw = BASE | {"norm": "batch", "epochs": 3}
    for bias_init in (0.0, 0.5):
        on = train_run(kw | {"bias": True, "bias_init": bias_init}, data)
        off = train_run(kw | {"bias": False}, data)
        other_seed = train_run(kw | {"bias": False, "seed": 5}, data)
        d_pair = abs(on.final["train_loss"] - off.final["train_loss"])
        d_seed = abs(off.final["train_loss"] - other_seed.final["train_loss"])
        assert d_pair < 1e-3 and d_pair < d_seed / 10
        for m in ("test_loss", "val_loss"):
            pair = abs(on.final[m] - off.final[m])
            seeds = abs(off.final[m] - other_seed.final[m])
            if bias_init == 0.0:
                assert pair < 1e-3 and pair < seeds / 10
            else:
                assert pair > 1e-2  # the running-mean warm-up carries the bias constant


def straight_and_resumed(run, data, after_epoch):
    """`run` trained straight through, and again from the state its worker saved at the
    end of `after_epoch` before it died; also that state."""
    straight = train_run(run, data)
    states = {}

    def keep(m, o, snap):
        if m["epoch"] == after_epoch:
            states["s"] = snap()
            raise KeyboardInterrupt  # the worker dies after that epoch

    with contextlib.suppress(KeyboardInterrupt):
        train_run(run, data, on_epoch=keep)
    return straight, train_run(run, data, start_state=states["s"]), states["s"]


def test_resume_from_a_checkpoint_gives_the_same_numbers():
    torch.set_num_threads(1)
    data = load_tensors(DATA)
    run = BASE | {"epochs": 4, "norm": "batch", "optimizer": "adam", "lr": 0.01}
    straight, resumed, _ = straight_and_resumed(run, data, after_epoch=2)
    assert resumed.epochs == 4 and len(resumed.history) == 4
    assert strip_times(resumed.history) == strip_times(straight.history)


def test_mixed_precision_trains_and_records_its_state():
    data = load_tensors(DATA)
    fp32 = train_run(BASE, data)
    for precision in ("bf16", "fp16"):
        out = train_run(BASE | {"precision": precision}, data)
        assert out.status == "completed"
        assert out.final["train_loss"] < out.history[0]["train_loss"]
        assert strip_times(out.history) != strip_times(fp32.history)  # it did take effect


def test_training_by_steps_logs_every_pass_and_stops_at_the_count():
    data = load_tensors(DATA)
    n = len(data.x_train)
    steps_seen = []
    run = BASE | {"steps": 13, "batch_size": 50}
    out = train_run(run, data, on_epoch=lambda m, o, snap: steps_seen.append(m["step"]))
    per = n // 50 + (n % 50 >= 2)
    assert 2 * per < 13 < 3 * per  # a partial last epoch
    assert [h["epoch"] for h in out.history] == [1, 2, 3]
    assert steps_seen == [per, 2 * per, 13]
    # the same batches as training by epochs, up to the step count
    by_epochs = train_run(BASE | {"epochs": 2, "batch_size": 50}, data)
    assert strip_times(by_epochs.history) == [
        {k: v for k, v in h.items() if k != "step"} for h in strip_times(out.history[:2])]
    assert "step" not in by_epochs.final


def test_resume_by_steps_and_with_dropout_gives_the_same_numbers():
    torch.set_num_threads(1)
    data = load_tensors(DATA)
    run = BASE | {"steps": 13, "batch_size": 50, "dropout": 0.5, "conv_dropout": 0.2,
                  "fc_layers": 1}
    straight, resumed, state = straight_and_resumed(run, data, after_epoch=1)
    assert state["masks"] is not None
    assert strip_times(resumed.history) == strip_times(straight.history)
    other = train_run(run | {"dropout": 0.3}, data)
    assert strip_times(other.history) != strip_times(straight.history)  # dropout acts
