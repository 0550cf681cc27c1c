"""The knobs: every hyperparameter a run takes, with its type, default and allowed values,
and the numeric limits of every count in a spec."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from study.spec.layer_values import LayerValues, describe

# --------------------------------------------------------------------------------------
# Knobs: every hyperparameter a run takes, with its type and allowed values. A knob can be
# fixed (in `model:` or `train:`), searched (in `space:`) or compared (in `compare:`).
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    name: str
    section: str  # "model" or "train"
    kind: type  # bool, int, float, str or LayerValues (a number or per-layer constants)
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    low: float | None = None  # inclusive lower bound (every int and float knob has both)
    high: float | None = None  # upper bound
    high_inclusive: bool = True
    odd: bool = False  # int knobs: odd values only (kernel sizes)

    def allowed(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.kind is LayerValues:
            return describe(self.low, self.high)
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        what = {int: "an odd integer" if self.odd else "an integer", float: "a number"}[
            self.kind]
        if self.low is not None and self.high is not None:
            if self.high_inclusive:
                return f"{what} from {fmt_number(self.low)} to {fmt_number(self.high)}"
            return f"{what} >= {fmt_number(self.low)} and < {fmt_number(self.high)}"
        if self.low is not None:
            return f"{what} >= {fmt_number(self.low)}"
        return f"{what}" + (" (finite)" if self.kind is float else "")

    def check(self, value: Any) -> Any:
        """Return the value coerced to the knob's type, or raise ValueError (no context)."""
        if self.kind is bool or self.kind is str:
            if not isinstance(value, self.kind) or (
                    self.kind is str and value not in (self.choices or ())):
                raise ValueError
            return value
        if self.kind is LayerValues:
            return LayerValues.check(value, self.low, self.high)
        value = self._number(value)
        if self.low is not None and value < self.low:
            raise ValueError
        if self.high is not None and (
            value > self.high or (not self.high_inclusive and value == self.high)
        ):
            raise ValueError
        return value

    def _number(self, value: Any) -> int | float:
        """`value` as this knob's int or finite float (True and 1.5 are no ints)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if self.odd and int(value) % 2 == 0:
                raise ValueError
            return int(value)
        try:
            number = float(value)
        except OverflowError:  # an int beyond a float's range
            raise ValueError from None
        if not math.isfinite(number):
            raise ValueError
        return number


def _knobs(*knobs: Knob) -> dict[str, Knob]:
    return {k.name: k for k in knobs}


# Upper bounds are far past any study of the folklore and stop a typo (10^9) early; what a
# model of legal depth and width needs is checked separately (study.spec.footprint).
KNOBS: dict[str, Knob] = _knobs(
    # --- model: the `cnn` family ---
    # 2048 covers ResNet-1202 (He et al. 2016)
    Knob("depth", "model", int, 4, "number of conv layers", low=1, high=2048),
    # 4096: 6x the widest Wide ResNet stage (640 channels)
    Knob("width", "model", int, 16, "channels of every conv layer", low=1, high=4096),
    # 11: AlexNet's first layer; odd so that SAME padding is symmetric at stride 1
    Knob("kernel", "model", int, 3, "side of every conv kernel, in pixels", low=1, high=11,
         odd=True),
    # 4: AlexNet's first layer; larger strides skip pixels the kernel never sees
    Knob("stride", "model", int, 1, "stride of every conv layer (SAME padding: the map "
         "shrinks to ceil(size / stride))", low=1, high=4),
    Knob("bias", "model", bool, True, "conv layers have a bias"),
    # the folklore's constants are 0 to 1; past +-100 every ReLU starts saturated or dead
    Knob("bias_init", "model", LayerValues, 0.0, "constants the conv biases start at",
         low=-100.0, high=100.0),
    Knob("norm", "model", str, "none", "normalization after each conv", choices=("none", "batch")),
    Knob("residual", "model", bool, False, "identity shortcut around each conv after the first"),
    Knob("branch_init", "model", str, "default", "residual branch scale at init: 'zero' is a "
         "learnable gain starting at 0 (SkipInit)", choices=("default", "zero")),
    Knob("init", "model", str, "kaiming", "weight init",
         choices=("kaiming", "xavier", "default", "trunc_normal")),
    # 10: weights of std 10 saturate any net; the classic value is 0.1
    Knob("init_std", "model", float, 0.1, "standard deviation of init: trunc_normal "
         "(a normal cut at 2 standard deviations)", low=1e-4, high=10.0),
    Knob("pool", "model", str, "max", "2x2 downsampling between stages ('none': only "
         "strides downsample)", choices=("max", "avg", "none")),
    Knob("flatten", "model", bool, False, "the head reads the flattened last feature map "
         "(false: its global average)"),
    Knob("conv_dropout", "model", float, 0.0, "dropout rate after every conv layer", low=0.0,
         high=1.0, high_inclusive=False),
    # 64: CNN heads have 0 to 2 hidden layers (VGG: 2)
    Knob("fc_layers", "model", int, 0, "hidden fully connected layers before the classifier",
         low=0, high=64),
    # 65536: 16x VGG's 4096-unit layers
    Knob("fc_width", "model", int, 64, "units of each hidden fully connected layer", low=1,
         high=65536),
    Knob("fc_bias", "model", bool, True, "fully connected layers have a bias"),
    # as bias_init; the layers are the hidden ones, then the classifier
    Knob("fc_bias_init", "model", LayerValues, 0.0, "constants the fully connected biases "
         "start at (hidden layers, then the classifier)", low=-100.0, high=100.0),
    Knob("dropout", "model", float, 0.0, "dropout rate of the classifier's input", low=0.0,
         high=1.0, high_inclusive=False),
    # --- train ---
    # 10000: 50x a long CIFAR-10 schedule (200 epochs)
    Knob("epochs", "train", int, 10, "passes over the training split", low=1, high=10_000),
    # 10^7: 100x a long ImageNet schedule in steps; 0 trains by epochs
    Knob("steps", "train", int, 0, "optimizer steps, then stop (0: train by epochs)", low=0,
         high=10_000_000),
    # 65536: the largest batches in the literature (large-batch ImageNet, 64k)
    Knob("batch_size", "train", int, 64, "examples per step", low=1, high=65536),
    Knob("optimizer", "train", str, "sgd", "optimizer", choices=("sgd", "adam")),
    # 10: SGD with BatchNorm trains up to about 1; Adam diverges far below 10
    Knob("lr", "train", float, 0.02, "learning rate", low=0.0, high=10.0),
    Knob("momentum", "train", float, 0.9, "SGD momentum (Adam: beta1)", low=0.0, high=1.0,
         high_inclusive=False),
    # 1: usual values are 1e-4 to 5e-4; at 1 the decay outweighs any gradient
    Knob("weight_decay", "train", float, 0.0, "L2 weight decay", low=0.0, high=1.0),
    Knob("precision", "train", str, "fp32", "autocast precision of the forward pass",
         choices=("fp32", "bf16", "fp16")),
)

FUSE_MODES = ("auto", "on", "off")
DATASETS = ("digits", "synthetic", "npz", "idx", "fashion-mnist", "cifar10")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
METRICS = {
    "val_accuracy": "max",
    "test_accuracy": "max",
    "train_accuracy": "max",
    "train_loss": "min",
    "val_loss": "min",
}
SAMPLERS = ("tpe", "random", "qmc", "grid", "nsga2")
# A study name: MLflow experiment, Optuna study prefix and folder names (results.py reads it)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
NAME_RE = re.compile(NAME_PATTERN)  # with fullmatch: no "\n" at the end

# Bounds of every other count and number: field -> (low, high), inclusive. Each high is far
# past what a study needs and stops a typo (or 10^9) before it becomes hours or gigabytes.
LIMITS: dict[str, tuple[float, float]] = {
    "repeats": (1, 1000),  # seeds per level: a CI's width shrinks as 1/sqrt(n)
    "search.trials": (1, 10_000),  # configurations; TPE's ask takes seconds long before
    "search.seed": (0, 2**31 - 1),  # run seeds seed + repeat stay in numpy's 32-bit range
    "search.startup_trials": (1, 10_000),  # as trials
    "search.pending": (1, 1024),  # proposals in flight: more than any cluster's slots
    "search.grace_period": (1, 10_000),  # epochs, as train.epochs
    "search.reduction_factor": (2, 100),  # ASHA keeps 1/factor per rung; 100 keeps ~none
    "dataset.split_seed": (0, 2**32 - 1),  # numpy's seed range
    "dataset.limit": (10, 100_000_000),  # training examples kept: more than any dataset here
    "dataset.samples": (20, 1_000_000),  # synthetic examples, generated in memory
    "dataset.image_size": (1, 1024),  # synthetic side in pixels: ImageNet scale and beyond
    "dataset.channels": (1, 64),  # synthetic channels: images have 1 to 4
    "dataset.classes": (2, 1000),  # synthetic classes: ImageNet has 1000
    "execution.concurrency": (1, 1024),  # runs at once: more than any cluster's slots
    "execution.retries": (0, 100),  # a run failing 100 times has a bug, not bad luck
    "execution.checkpoint_every": (0, 10_000),  # epochs, as train.epochs
    "execution.runs_per_trial": (1, 10_000),  # runs of one Tune trial, as search.trials
    "verdict.equivalence_margin": (0, 100),  # in the metric's units; losses are < 100
    "verdict.alpha": (0, 0.5),  # 0.5: a test that is wrong half the time says nothing
    "verdict.sequential.max_pairs": (2, 10_000),  # pairs per comparison, as trials
    "verdict.sequential.looks": (1, 100),  # looks at one comparison: each spends alpha
    "verdict.sequential.min_pairs": (2, 10_000),  # a t interval needs two pairs at least
    "resources.cpu": (0, 1024),  # CPUs per run: more than one machine has
    "resources.gpu": (0, 64),  # GPUs per run: more than one machine has
    "levels": (2, 64),  # compared levels: each configuration runs every one
    "choices": (1, 1000),  # values of one `choice`
    "objectives": (1, 4),  # metrics of a multi-objective search: a front in 5+ is unreadable
    "runs": (1, 100_000),  # trials x levels x repeats: beyond, split the study
    "synthetic_values": (1, 100_000_000),  # samples x channels x image_size^2 (0.8 GB)
    "question": (1, 2000),  # characters: a question, not a document
}


def fmt_number(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(v)
    return str(v)

