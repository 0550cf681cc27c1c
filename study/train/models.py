"""The `cnn` model family: depth x width 3x3 convs, bias on/off and its init constant, norm,
identity shortcuts, a fully connected head with its own bias settings.

Initial values come from :func:`init_parameters`: weights are drawn from one seeded
generator in a fixed order and biases are constants, so a model with and without biases
(or with another bias constant) starts from bit-identical values for every parameter the two
share. Models are built and initialised on the CPU, then moved, so the initial values do not
depend on the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from study.spec.footprint import pool_positions  # torch-free: the spec stage uses it too

__all__ = ["CNN", "ModelStats", "build_model", "init_parameters", "model_stats",
           "pool_positions"]


class ConvUnit(nn.Module):
    """3x3 conv -> norm -> ReLU, with an optional identity shortcut around conv and norm.

    `branch_init="zero"` scales the residual branch by a learnable gain that starts at 0
    (SkipInit, De & Smith 2020): every unit starts as the identity, which lets deep residual
    nets without normalization train (with "default" their activations grow with depth).
    """

    def __init__(self, cin: int, cout: int, *, bias: bool, norm: str, residual: bool,
                 branch_init: str = "default") -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
        self.norm = nn.BatchNorm2d(cout) if norm == "batch" else nn.Identity()
        self.residual = residual and cin == cout
        self.gain = nn.Parameter(torch.zeros(1)) if self.residual and branch_init == "zero" \
            else None
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        if not self.residual:
            return self.act(y)
        return self.act(x + (y if self.gain is None else self.gain * y))


class CNN(nn.Module):
    def __init__(self, *, in_channels: int, image_size: int, num_classes: int, depth: int,
                 width: int, bias: bool, norm: str, residual: bool, pool: str,
                 fc_layers: int, fc_width: int, fc_bias: bool,
                 branch_init: str = "default") -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1 (depth={depth}, width={width})")
        self.pools = set(pool_positions(depth, image_size))
        self.units = nn.ModuleList(
            ConvUnit(in_channels if i == 0 else width, width, bias=bias, norm=norm,
                     residual=residual and i > 0, branch_init=branch_init)
            for i in range(depth)
        )
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        fcs: list[nn.Module] = []
        fan_in = width
        for _ in range(fc_layers):
            fcs += [nn.Linear(fan_in, fc_width, bias=fc_bias), nn.ReLU()]
            fan_in = fc_width
        self.head = nn.Sequential(*fcs)
        self.classifier = nn.Linear(fan_in, num_classes, bias=fc_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, unit in enumerate(self.units):
            x = unit(x)
            if i in self.pools:
                x = self.pool(x)
        x = x.mean(dim=(2, 3))  # global average pool
        return self.classifier(self.head(x))


def build_model(run: Mapping[str, Any], input_shape: tuple[int, int, int],
                num_classes: int) -> CNN:
    """Build and initialise the model a run describes (on the CPU)."""
    c, h, w = input_shape
    # nn.Conv2d/nn.Linear draw throwaway defaults from the global RNG: keep it untouched.
    with torch.random.fork_rng(devices=[]):
        model = CNN(in_channels=c, image_size=min(h, w), num_classes=num_classes,
                    depth=run["depth"], width=run["width"], bias=run["bias"], norm=run["norm"],
                    residual=run["residual"], pool=run["pool"], fc_layers=run["fc_layers"],
                    fc_width=run["fc_width"], fc_bias=run["fc_bias"],
                    branch_init=run["branch_init"])
    init_parameters(model, seed=run["seed"], init=run["init"], bias_init=run["bias_init"],
                    fc_bias_init=run["fc_bias_init"])
    return model


@torch.no_grad()
def init_parameters(model: nn.Module, *, seed: int, init: str, bias_init: float,
                    fc_bias_init: float) -> None:
    """Draw every conv/linear weight from one generator, in module order; biases constant.

    `init`: "kaiming" (He normal, fan_in, ReLU gain), "xavier" (Glorot uniform) or
    "default" (PyTorch's default: uniform with bound 1/sqrt(fan_in)). Norm layers start at
    weight 1, bias 0.
    """
    gen = torch.Generator().manual_seed(int(seed))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight
            receptive = w[0, 0].numel() if w.dim() > 2 else 1  # k*k for a conv, 1 for linear
            fan_in, fan_out = w[0].numel(), w.shape[0] * receptive
            if init == "kaiming":
                w.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
            elif init == "xavier":
                a = math.sqrt(6.0 / (fan_in + fan_out))
                w.uniform_(-a, a, generator=gen)
            elif init == "default":
                b = 1.0 / math.sqrt(fan_in)
                w.uniform_(-b, b, generator=gen)
            else:
                raise ValueError(f"unknown init {init!r}; allowed: kaiming, xavier, default")
            if m.bias is not None:
                m.bias.fill_(bias_init if isinstance(m, nn.Conv2d) else fc_bias_init)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
        elif isinstance(m, ConvUnit) and m.gain is not None:
            m.gain.zero_()


@dataclass(frozen=True)
class ModelStats:
    params: int  # trainable parameters
    macs: int  # multiply-adds per example in conv and linear layers


def model_stats(model: CNN, input_shape: tuple[int, int, int]) -> ModelStats:
    """Parameter count and multiply-adds per example, computed from the layer shapes."""
    _, h, w = input_shape
    macs = 0
    for i, unit in enumerate(model.units):
        conv = unit.conv
        macs += h * w * conv.out_channels * conv.in_channels * 9
        if i in model.pools:
            h, w = h // 2, w // 2
    for m in [*model.head.modules(), model.classifier]:
        if isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelStats(params=params, macs=macs)
