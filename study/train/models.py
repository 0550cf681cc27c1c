"""The `cnn` model family: depth x width convs (kernel, stride, SAME padding), bias on/off
and its per-layer init constants, norm, identity shortcuts, dropout, a fully connected head
with its own bias settings. `build_model` builds any registered family
(study.spec.families); this module registers the builder of `cnn`.

Initial values come from :func:`init_parameters`: weights are drawn from one seeded
generator in a fixed order and biases are constants, so a model with and without biases
(or with other bias constants) starts from bit-identical values for every parameter the two
share. Models are built and initialised on the CPU, then moved, so the initial values do not
depend on the device. Dropout masks come from a generator of the model's own, seeded by the
run, so the arms of a pair (whose masked tensors have the same shapes) draw the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.spec import KNOBS
from study.spec.families import builder_of
from study.spec.footprint import (  # torch-free: the spec stage uses them too
    conv_size,
    final_map,
    pool_positions,
    same_padding,
)
from study.spec.layer_values import expand

__all__ = ["CNN", "MaskSource", "ModelStats", "build_cnn", "build_model", "init_parameters",
           "model_stats", "pool_positions"]

DROPOUT_SEED_OFFSET = 104_729  # dropout mask generator seed = run seed + this


class MaskSource:
    """The dropout masks of one model: one generator, on the device of the activations,
    seeded by the run; every dropout layer of the model draws from it in forward order."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.gen: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self.gen is None or self.gen.device != device:
            self.gen = torch.Generator(device=device).manual_seed(self.seed)
        return self.gen

    def get_state(self) -> torch.Tensor | None:
        return None if self.gen is None else self.gen.get_state()

    def set_state(self, device: torch.device, state: torch.Tensor | None) -> None:
        if state is not None:  # a checkpoint loaded onto a GPU moved it: states stay on the CPU
            self.generator(device).set_state(state.cpu())


class SeededDropout(nn.Module):
    """Inverted dropout whose masks come from a MaskSource (not the global RNG)."""

    def __init__(self, p: float, masks: MaskSource) -> None:
        super().__init__()
        self.p = p
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.empty(x.shape, device=x.device).bernoulli_(
            1.0 - self.p, generator=self.masks.generator(x.device))
        return x * (keep / (1.0 - self.p)).to(x.dtype)


class ConvUnit(nn.Module):
    """conv -> norm -> ReLU, with an optional identity shortcut around conv and norm.

    A strided conv pads its input as TensorFlow's SAME does (output ceil(size / stride), the
    extra pixel after); at stride 1 that is PyTorch's symmetric padding of kernel // 2.
    `branch_init="zero"` scales the residual branch by a learnable gain that starts at 0
    (SkipInit, De & Smith 2020): every unit starts as the identity, which lets deep residual
    nets without normalization train (with "default" their activations grow with depth).
    """

    def __init__(self, cin: int, cout: int, *, bias: bool, norm: str, residual: bool,
                 branch_init: str = "default", kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride,
                              padding=kernel // 2 if stride == 1 else 0, bias=bias)
        self.norm = nn.BatchNorm2d(cout) if norm == "batch" else nn.Identity()
        self.residual = residual and cin == cout and stride == 1
        self.gain = nn.Parameter(torch.zeros(1)) if self.residual and branch_init == "zero" \
            else None
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        if s > 1:
            top, bottom = same_padding(x.shape[-2], k, s)
            left, right = same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        y = self.norm(self.conv(x))
        if not self.residual:
            return self.act(y)
        return self.act(inp + (y if self.gain is None else self.gain * y))


class CNN(nn.Module):
    def __init__(self, *, in_channels: int, image_size: int | tuple[int, int],
                 num_classes: int, depth: int, width: int, bias: bool, norm: str,
                 residual: bool, pool: str, fc_layers: int, fc_width: int, fc_bias: bool,
                 branch_init: str = "default", kernel: int = 3, stride: int = 1,
                 flatten: bool = False, conv_dropout: float = 0.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1 (depth={depth}, width={width})")
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.pools = set(pool_positions(depth, min(h, w), stride, pool))
        self.masks = MaskSource()
        self.units = nn.ModuleList(
            ConvUnit(in_channels if i == 0 else width, width, bias=bias, norm=norm,
                     residual=residual and i > 0, branch_init=branch_init, kernel=kernel,
                     stride=stride)
            for i in range(depth)
        )
        self.conv_drop = SeededDropout(conv_dropout, self.masks) if conv_dropout else None
        self.pool = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2)}.get(pool, nn.Identity())
        self.flatten = flatten
        fh, fw = final_map(depth, h, w, stride, pool)
        fcs: list[nn.Module] = []
        fan_in = width * fh * fw if flatten else width
        for _ in range(fc_layers):
            fcs += [nn.Linear(fan_in, fc_width, bias=fc_bias), nn.ReLU()]
            fan_in = fc_width
        self.head = nn.Sequential(*fcs)
        self.drop = SeededDropout(dropout, self.masks) if dropout else None
        self.classifier = nn.Linear(fan_in, num_classes, bias=fc_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, unit in enumerate(self.units):
            x = unit(x)
            if self.conv_drop is not None:
                x = self.conv_drop(x)
            if i in self.pools:
                x = self.pool(x)
        x = x.flatten(1) if self.flatten else x.mean(dim=(2, 3))  # or global average pool
        x = self.head(x)
        if self.drop is not None:
            x = self.drop(x)
        return self.classifier(x)


def knob(run: Mapping[str, Any], name: str) -> Any:
    """The run's value of a knob, its default where the run predates the knob."""
    return run.get(name, KNOBS[name].default)


def build_model(run: Mapping[str, Any], input_shape: tuple[int, int, int],
                num_classes: int) -> nn.Module:
    """Build and initialise the model a run describes (on the CPU), with the builder of
    its family (`run["model"]`, default cnn) from the registry."""
    return builder_of(run.get("model", "cnn"))(run, input_shape, num_classes)


def build_cnn(run: Mapping[str, Any], input_shape: tuple[int, int, int],
              num_classes: int) -> CNN:
    """The `cnn` family's builder."""
    c, h, w = input_shape
    # nn.Conv2d/nn.Linear draw throwaway defaults from the global RNG: keep it untouched.
    with torch.random.fork_rng(devices=[]):
        model = CNN(in_channels=c, image_size=(h, w), num_classes=num_classes,
                    depth=run["depth"], width=run["width"], bias=run["bias"], norm=run["norm"],
                    residual=run["residual"], pool=run["pool"], fc_layers=run["fc_layers"],
                    fc_width=run["fc_width"], fc_bias=run["fc_bias"],
                    branch_init=run["branch_init"], kernel=knob(run, "kernel"),
                    stride=knob(run, "stride"), flatten=knob(run, "flatten"),
                    conv_dropout=knob(run, "conv_dropout"), dropout=knob(run, "dropout"))
    init_parameters(model, seed=run["seed"], init=run["init"], bias_init=run["bias_init"],
                    fc_bias_init=run["fc_bias_init"], init_std=knob(run, "init_std"))
    model.masks.seed = int(run["seed"]) + DROPOUT_SEED_OFFSET
    return model


def _draw_weight(w: torch.Tensor, init: str, std: float, gen: torch.Generator) -> None:
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
    elif init == "trunc_normal":  # TensorFlow's truncated_normal: cut at 2 std
        nn.init.trunc_normal_(w, 0.0, std, -2.0 * std, 2.0 * std, generator=gen)
    else:
        raise ValueError(f"unknown init {init!r}; allowed: kaiming, xavier, default, "
                         "trunc_normal")


@torch.no_grad()
def init_parameters(model: nn.Module, *, seed: int, init: str, bias_init: float | str,
                    fc_bias_init: float | str, init_std: float = 0.1) -> None:
    """Draw every conv/linear weight from one generator, in module order; biases constant.

    `init`: "kaiming" (He normal, fan_in, ReLU gain), "xavier" (Glorot uniform), "default"
    (PyTorch's default: uniform with bound 1/sqrt(fan_in)) or "trunc_normal" (std
    `init_std`, cut at 2 std). `bias_init` and `fc_bias_init` give the constants of the conv
    layers and of the linear layers (hidden, then classifier), in module order: a number for
    all, or per layer (study.spec.layer_values). Norm layers start at weight 1, bias 0.
    """
    gen = torch.Generator().manual_seed(int(seed))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    constants = dict(zip(map(id, convs), expand(bias_init, len(convs)), strict=True))
    constants |= dict(zip(map(id, linears), expand(fc_bias_init, len(linears)), strict=True))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _draw_weight(m.weight, init, init_std, gen)
            if m.bias is not None:
                m.bias.fill_(constants[id(m)])
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
        elif isinstance(m, ConvUnit) and m.gain is not None:
            m.gain.zero_()


@dataclass(frozen=True)
class ModelStats:
    params: int  # trainable parameters
    macs: int  # multiply-adds per example in conv and linear layers


def model_stats(model: nn.Module, input_shape: tuple[int, int, int]) -> ModelStats:
    """Parameter count and multiply-adds per example, computed from the layer shapes (for
    a family other than cnn: measured on one example)."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not isinstance(model, CNN):
        return ModelStats(params=params, macs=_measured_macs(model, input_shape))
    _, h, w = input_shape
    macs = 0
    for i, unit in enumerate(model.units):
        conv = unit.conv
        k, s = conv.kernel_size[0], conv.stride[0]
        h, w = conv_size(h, s), conv_size(w, s)
        macs += h * w * conv.out_channels * conv.in_channels * k * k
        if i in model.pools:
            h, w = h // 2, w // 2
    for m in [*model.head.modules(), model.classifier]:
        if isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features
    return ModelStats(params=params, macs=macs)


@torch.no_grad()
def _measured_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-adds of the conv and linear layers on one example, in eval mode (running
    statistics and random streams untouched)."""
    macs = [0]

    def count(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            macs[0] += out.numel() * (m.in_channels // m.groups) * k
        elif isinstance(m, nn.Linear):
            macs[0] += m.in_features * m.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        device = next(iter(model.parameters())).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return macs[0]
