"""The cnn family: sizes, shapes at every depth, the bit-identical init contract."""

from __future__ import annotations

import pytest
import torch

from study.data.load import load_tensors
from study.spec import KNOBS, DatasetSpec
from study.train.models import build_model, model_stats, pool_positions
from study.train.trainer import train_run

BASE = {k.name: k.default for k in KNOBS.values()} | {"seed": 0}


def run_of(**kw):
    return BASE | kw


def expected_params(c, d, w, k, *, bias, norm, fc_bias=True):
    n = c * w * 9 + (d - 1) * w * w * 9
    n += d * w if bias else 0
    n += 2 * d * w if norm == "batch" else 0
    n += w * k + (k if fc_bias else 0)
    return n


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_parameter_counts(bias, norm):
    for d, w in [(1, 8), (3, 16), (7, 5)]:
        m = build_model(run_of(depth=d, width=w, bias=bias, norm=norm), (3, 32, 32), 10)
        st = model_stats(m, (3, 32, 32))
        assert st.params == expected_params(3, d, w, 10, bias=bias, norm=norm)


def test_zero_branch_init_adds_one_gain_per_residual_unit_and_starts_as_identity():
    plain = build_model(run_of(depth=6, width=8, residual=True), (1, 8, 8), 10)
    skip = build_model(run_of(depth=6, width=8, residual=True, branch_init="zero"), (1, 8, 8),
                       10)
    assert model_stats(skip, (1, 8, 8)).params == model_stats(plain, (1, 8, 8)).params + 5
    x = torch.relu(torch.randn(2, 8, 4, 4))
    assert torch.equal(skip.units[3](x), x)  # gain 0: the unit is the identity on ReLU inputs
    equal, _ = shared_params_equal(plain, skip)
    assert equal


def test_bias_off_removes_exactly_the_conv_biases():
    on = build_model(run_of(depth=5, width=16, bias=True), (1, 8, 8), 10)
    off = build_model(run_of(depth=5, width=16, bias=False), (1, 8, 8), 10)
    assert model_stats(on, (1, 8, 8)).params - model_stats(off, (1, 8, 8)).params == 5 * 16


def test_macs_from_shapes():
    # depth 3 on 8x8: pools after layers 0 and 1 (8 -> 4 -> 2)
    assert pool_positions(3, 8) == [0, 1]
    m = build_model(run_of(depth=3, width=4, fc_layers=1, fc_width=6), (1, 8, 8), 10)
    expect = 8 * 8 * 4 * 1 * 9 + 4 * 4 * 4 * 4 * 9 + 2 * 2 * 4 * 4 * 9 + 4 * 6 + 6 * 10
    assert model_stats(m, (1, 8, 8)).macs == expect


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 3, 3)])
def test_every_depth_is_valid_on_every_input_size(shape):
    x = torch.randn(2, *shape)
    for depth in range(1, 25):
        for residual in (False, True):
            m = build_model(run_of(depth=depth, width=4, residual=residual), shape, 7)
            out = m(x)
            assert out.shape == (2, 7)
            assert torch.isfinite(out).all()
            pools = pool_positions(depth, min(shape[1:]))
            assert len(pools) <= depth - 1 and all(p < depth - 1 for p in pools)
            assert min(shape[1:]) // 2 ** len(pools) >= min(2, min(shape[1:]))


def shared_params_equal(a, b, weights_only=False):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    shared = sorted(n for n in set(pa) & set(pb) if not weights_only or n.endswith("weight"))
    assert shared
    return all(torch.equal(pa[n], pb[n]) for n in shared), shared


@pytest.mark.parametrize("init", ["kaiming", "xavier", "default"])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_bias_on_off_share_bit_identical_initial_values(init, norm):
    for seed in (0, 1, 12345):
        kw = dict(depth=6, width=8, norm=norm, init=init, seed=seed, fc_layers=1)
        a = build_model(run_of(bias=True, bias_init=0.1, **kw), (1, 8, 8), 10)
        b = build_model(run_of(bias=False, **kw), (1, 8, 8), 10)
        c = build_model(run_of(bias=True, bias_init=1.0, fc_bias_init=1.0, **kw), (1, 8, 8), 10)
        d = build_model(run_of(bias=True, bias_init=0.1, fc_bias=False, **kw), (1, 8, 8), 10)
        for other, weights_only in ((b, False), (c, True), (d, False)):
            equal, shared = shared_params_equal(a, other, weights_only)
            assert equal
            assert sum(n.endswith("conv.weight") for n in shared) == 6
        assert all(torch.all(u.conv.bias == 0.1) for u in a.units)
        assert torch.all(c.classifier.bias == 1.0)
    x = build_model(run_of(seed=0, depth=3), (1, 8, 8), 10)
    y = build_model(run_of(seed=1, depth=3), (1, 8, 8), 10)
    assert not torch.equal(x.units[0].conv.weight, y.units[0].conv.weight)


def test_init_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    build_model(run_of(depth=4), (1, 8, 8), 10)
    assert torch.equal(before, torch.rand(3))


def test_residual_depth_20_trains():
    torch.set_num_threads(1)
    data = load_tensors(DatasetSpec("digits"))
    run = run_of(depth=20, width=16, residual=True, norm="batch", epochs=4, lr=0.05)
    out = train_run(run, data)
    assert out.status == "completed" and out.epochs == 4
    losses = [h["train_loss"] for h in out.history]
    assert losses[-1] < 0.25 * losses[0]
    assert out.final["val_accuracy"] > 0.8  # 10 classes: chance is 0.1
