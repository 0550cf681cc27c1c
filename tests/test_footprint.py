"""study.spec.footprint's formulas (no torch) against the real model (torch)."""

from __future__ import annotations

import pytest
import torch

from study.spec import footprint
from study.train.models import CNN

SHAPES = [
    # depth, width, norm, residual, branch_init, image size, fc_layers
    (1, 3, "none", False, "default", 8, 0),
    (4, 16, "batch", False, "default", 8, 1),
    (10, 8, "none", True, "zero", 28, 2),
    (6, 32, "batch", True, "default", 32, 0),
    (20, 16, "batch", True, "zero", 32, 1),
]


def _model(depth, width, norm, residual, branch_init, size, fc_layers, bias=True):
    return CNN(in_channels=3, image_size=size, num_classes=7, depth=depth, width=width,
               bias=bias, norm=norm, residual=residual, pool="max", fc_layers=fc_layers,
               fc_width=12, fc_bias=bias, branch_init=branch_init)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_param_count_is_exact(shape, bias):
    depth, width, norm, residual, branch_init, size, fc_layers = shape
    model = _model(*shape, bias=bias)
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert footprint.param_count(
        in_channels=3, classes=7, depth=depth, width=width, bias=bias, norm=norm,
        residual=residual, zero_gain=branch_init == "zero", fc_layers=fc_layers,
        fc_width=12, fc_bias=bias) == real


@pytest.mark.parametrize("shape", SHAPES)
def test_activation_estimate_bounds_what_autograd_keeps(shape):
    depth, width, norm, residual, branch_init, size, fc_layers = shape
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
        fc_width=12, classes=7)
    assert real <= est <= 2 * real, (real, est)

