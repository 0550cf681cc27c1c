"""study.spec.footprint's formulas (no torch) against the real model (torch)."""

from __future__ import annotations

import pytest
import torch

from study.spec import footprint
from study.train.models import CNN

SHAPES = [
    # depth, width, norm, residual, branch_init, image size, fc_layers, new knobs
    (1, 3, "none", False, "default", 8, 0, {}),
    (4, 16, "batch", False, "default", 8, 1, {}),
    (10, 8, "none", True, "zero", 28, 2, {}),
    (6, 32, "batch", True, "default", 32, 0, {}),
    (20, 16, "batch", True, "zero", 32, 1, {}),
    # the classic net: 5x5 stride 2, no pooling, flattened into the head
    (2, 16, "none", False, "default", 28, 1, {"kernel": 5, "stride": 2, "pool": "none",
                                              "flatten": True}),
    (5, 8, "batch", False, "default", 32, 1, {"kernel": 7, "stride": 3, "conv_dropout": 0.2,
                                              "dropout": 0.5}),
    (6, 8, "none", True, "zero", 28, 2, {"kernel": 1, "flatten": True, "dropout": 0.1}),
    (3, 4, "none", False, "default", 9, 0, {"kernel": 11, "stride": 4, "pool": "avg",
                                            "flatten": True, "dropout": 0.3}),
]


def _model(depth, width, norm, residual, branch_init, size, fc_layers, new, bias=True):
    return CNN(in_channels=3, image_size=size, num_classes=7, depth=depth, width=width,
               bias=bias, norm=norm, residual=residual, pool=new.get("pool", "max"),
               fc_layers=fc_layers, fc_width=12, fc_bias=bias, branch_init=branch_init,
               kernel=new.get("kernel", 3), stride=new.get("stride", 1),
               flatten=new.get("flatten", False), conv_dropout=new.get("conv_dropout", 0.0),
               dropout=new.get("dropout", 0.0))


def _head_in(depth, width, size, new):
    if not new.get("flatten"):
        return width
    h, w = footprint.final_map(depth, size, size, new.get("stride", 1),
                               new.get("pool", "max"))
    return width * h * w


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_param_count_is_exact(shape, bias):
    depth, width, norm, residual, branch_init, size, fc_layers, new = shape
    model = _model(*shape, bias=bias)
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert footprint.param_count(
        in_channels=3, classes=7, depth=depth, width=width, bias=bias, norm=norm,
        residual=residual, zero_gain=branch_init == "zero", fc_layers=fc_layers,
        fc_width=12, fc_bias=bias, kernel=new.get("kernel", 3),
        head_in=_head_in(depth, width, size, new)) == real


@pytest.mark.parametrize("shape", SHAPES)
def test_activation_estimate_bounds_what_autograd_keeps(shape):
    depth, width, norm, residual, branch_init, size, fc_layers, new = shape
    model = _model(*shape)
    params = {p.data_ptr() for p in model.parameters()}
    kept: dict[tuple[int, tuple[int, ...]], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            kept[(t.data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    batch = 8
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, 3, size, size)).sum()
    real = sum(kept.values()) / batch
    est = footprint.BYTES_PER_VALUE * footprint.activation_values(
        in_channels=3, height=size, width_px=size, depth=depth, width=width, norm=norm,
        residual=residual, zero_gain=branch_init == "zero", fc_layers=fc_layers,
        fc_width=12, classes=7, **new)
    assert real <= est <= 2 * real, (real, est)


@pytest.mark.parametrize("depth, size, stride, pool, expect", [
    (2, 28, 2, "none", (7, 7)),  # the classic net
    (4, 8, 1, "max", (2, 2)),
    (4, 8, 1, "none", (8, 8)),
    (12, 8, 2, "max", (1, 1)),  # strides shrink the map to a pixel and it stays there
    (3, 32, 2, "avg", (1, 1)),
])
def test_final_map(depth, size, stride, pool, expect):
    assert footprint.final_map(depth, size, size, stride, pool) == expect
    model = _model(depth, 2, "none", False, "default", size, 0, {"stride": stride,
                                                                 "pool": pool})
    seen = []
    model.units[-1].register_forward_hook(lambda m, i, o: seen.append(o.shape[2:]))
    model(torch.randn(1, 3, size, size))
    pools = max(model.pools, default=-1) == depth - 1  # a pool after the last unit
    assert not pools and tuple(seen[0]) == expect
