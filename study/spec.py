"""Study specs: YAML -> validated, frozen objects.

Everything a user can get wrong is checked here, before Ray starts, and reported as a
:class:`SpecError` whose message names the file, the field path, the bad value and what is
allowed. This module imports no torch, Ray, Optuna or MLflow.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study import footprint, spec_yaml
from study.terminal import printable

__all__ = [
    "KNOBS",
    "LIMITS",
    "DatasetSpec",
    "Dist",
    "Knob",
    "STORAGE_ENV",
    "SpecError",
    "StudySpec",
    "apply_overrides",
    "load_spec",
    "parse_spec",
    "resolve_storage",
]


class SpecError(ValueError):
    """A study spec is invalid. The message names file, field, value and what is allowed."""


# --------------------------------------------------------------------------------------
# Knobs: every hyperparameter a run takes, with its type and allowed values. A knob can be
# fixed (in `model:` or `train:`), searched (in `space:`) or compared (in `compare:`).
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    name: str
    section: str  # "model" or "train"
    kind: type  # bool, int, float or str
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    low: float | None = None  # inclusive lower bound (every int and float knob has both)
    high: float | None = None  # upper bound
    high_inclusive: bool = True

    def allowed(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        what = {int: "an integer", float: "a number"}[self.kind]
        if self.low is not None and self.high is not None:
            if self.high_inclusive:
                return f"{what} from {_fmt(self.low)} to {_fmt(self.high)}"
            return f"{what} >= {_fmt(self.low)} and < {_fmt(self.high)}"
        if self.low is not None:
            return f"{what} >= {_fmt(self.low)}"
        return f"{what}" + (" (finite)" if self.kind is float else "")

    def check(self, value: Any) -> Any:
        """Return the value coerced to the knob's type, or raise ValueError (no context)."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if self.kind is str:
            if not isinstance(value, str) or value not in (self.choices or ()):
                raise ValueError
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            value = int(value)
        else:
            try:
                value = float(value)
            except OverflowError:  # an int beyond a float's range
                raise ValueError from None
            if not math.isfinite(value):
                raise ValueError
        if self.low is not None and value < self.low:
            raise ValueError
        if self.high is not None and (
            value > self.high or (not self.high_inclusive and value == self.high)
        ):
            raise ValueError
        return value


def _knobs(*knobs: Knob) -> dict[str, Knob]:
    return {k.name: k for k in knobs}


# Upper bounds are far past any study of the folklore and stop a typo (10^9) early; what a
# model of legal depth and width needs is checked separately (study.footprint).
KNOBS: dict[str, Knob] = _knobs(
    # --- model: the `cnn` family ---
    # 2048 covers ResNet-1202 (He et al. 2016)
    Knob("depth", "model", int, 4, "number of 3x3 conv layers", low=1, high=2048),
    # 4096: 6x the widest Wide ResNet stage (640 channels)
    Knob("width", "model", int, 16, "channels of every conv layer", low=1, high=4096),
    Knob("bias", "model", bool, True, "conv layers have a bias"),
    # the folklore's constants are 0 to 1; past +-100 every ReLU starts saturated or dead
    Knob("bias_init", "model", float, 0.0, "constant the conv biases start at", low=-100.0,
         high=100.0),
    Knob("norm", "model", str, "none", "normalization after each conv", choices=("none", "batch")),
    Knob("residual", "model", bool, False, "identity shortcut around each conv after the first"),
    Knob("branch_init", "model", str, "default", "residual branch scale at init: 'zero' is a "
         "learnable gain starting at 0 (SkipInit)", choices=("default", "zero")),
    Knob("init", "model", str, "kaiming", "weight init", choices=("kaiming", "xavier", "default")),
    Knob("pool", "model", str, "max", "2x2 downsampling between stages", choices=("max", "avg")),
    # 64: CNN heads have 0 to 2 hidden layers (VGG: 2)
    Knob("fc_layers", "model", int, 0, "hidden fully connected layers before the classifier",
         low=0, high=64),
    # 65536: 16x VGG's 4096-unit layers
    Knob("fc_width", "model", int, 64, "units of each hidden fully connected layer", low=1,
         high=65536),
    Knob("fc_bias", "model", bool, True, "fully connected layers have a bias"),
    # as bias_init
    Knob("fc_bias_init", "model", float, 0.0, "constant the fully connected biases start at",
         low=-100.0, high=100.0),
    # --- train ---
    # 10000: 50x a long CIFAR-10 schedule (200 epochs)
    Knob("epochs", "train", int, 10, "passes over the training split", low=1, high=10_000),
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

MODELS = ("cnn",)
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
SAMPLERS = ("tpe", "random", "qmc")
# A study name: MLflow experiment, Optuna study prefix and folder names (results.py reads it)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_NAME_RE = re.compile(NAME_PATTERN)  # with fullmatch: no "\n" at the end

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
    "resources.cpu": (0, 1024),  # CPUs per run: more than one machine has
    "resources.gpu": (0, 64),  # GPUs per run: more than one machine has
    "levels": (2, 64),  # compared levels: each configuration runs every one
    "choices": (1, 1000),  # values of one `choice`
    "runs": (1, 100_000),  # trials x levels x repeats: beyond, split the study
    "synthetic_values": (1, 100_000_000),  # samples x channels x image_size^2 (0.8 GB)
    "question": (1, 2000),  # characters: a question, not a document
}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(v)
    return str(v)


# --------------------------------------------------------------------------------------
# The validated spec
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """One searched knob: an Optuna distribution, optionally conditional (`when`)."""

    kind: str  # "choice", "int" or "float"
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "choice":
            s = "choice " + ", ".join(_fmt(c) for c in self.choices)
        else:
            s = f"{self.kind} [{_fmt(self.low)}, {_fmt(self.high)}]"
            if self.log:
                s += " log"
            if self.step is not None:
                s += f" step {_fmt(self.step)}"
        if self.when:
            s += " when " + ", ".join(
                f"{k} in {list(v)}" for k, v in self.when.items()
            )
        return s


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: str | None = None
    val_fraction: float = 0.1  # of the training pool, held out for model selection
    test_fraction: float = 0.2  # only for datasets without a predefined test split
    split_seed: int = 0  # fixes the split, independent of the run seeds
    limit: int | None = None  # keep at most this many training examples (quick studies)
    # synthetic only
    samples: int = 600
    image_size: int = 8
    channels: int = 1
    classes: int = 10

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StudySpec:
    name: str
    question: str
    dataset: DatasetSpec
    model: str
    fixed: Mapping[str, Any]  # every knob not searched or compared, with its value
    space: Mapping[str, Dist]
    compare_knob: str | None
    compare_levels: tuple[Any, ...]
    repeats: int
    sampler: str
    trials: int  # configurations Optuna proposes
    seed: int  # sampler seed; run seeds are seed, seed + 1, ... (one per repeat)
    startup_trials: int  # TPE: random configurations before the model-based ones
    pending: int  # configurations proposed before earlier results are known (see searcher)
    scheduler: str  # fifo (every run to its last epoch) or asha (early stopping)
    grace_period: int  # asha: epochs before a run can be stopped
    reduction_factor: int  # asha: keep the top 1/reduction_factor at each rung
    metric: str
    mode: str
    verdict_metric: str  # what the verdict is about (e.g. test_accuracy)
    verdict_mode: str  # max if higher is better
    margin: float  # equivalence margin, in the metric's units (0.005 = 0.5 pp)
    verdict_by: tuple[str, ...]  # knobs to break the effect down by
    alpha: float
    cpu: float
    gpu: float
    concurrency: int | None
    retries: int
    # epochs between checkpoints a retried run continues from; 0: never; None (auto): by
    # time (study.block.AUTO_CHECKPOINT_SECONDS)
    checkpoint_every: int | None
    fuse: str  # auto (on a GPU), on, off: train a block's compatible runs as one model
    runs_per_trial: int | None  # runs per Tune trial (whole pairs); None: chosen (runner)
    optuna_storage: str
    tracking_uri: str
    results_dir: str
    source: str  # the file it came from (or "<dict>")
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def levels(self) -> tuple[Any, ...]:
        """The levels each configuration runs: the compared ones, or a single None."""
        return self.compare_levels if self.compare_knob else (None,)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + r for r in range(self.repeats))

    @property
    def runs_per_config(self) -> int:
        return len(self.levels) * self.repeats

    @property
    def total_runs(self) -> int:
        return self.trials * self.runs_per_config

    def summary(self) -> str:
        """What the study runs, in a few lines, safe to print on a terminal."""
        lines = [
            f"study {self.name!r} ({self.source})",
            f"  question: {self.question}",
            f"  dataset:  {self.dataset.name}"
            + (f" ({self.dataset.path})" if self.dataset.path else ""),
            f"  model:    {self.model}",
        ]
        if self.compare_knob:
            lines.append(
                f"  compare:  {self.compare_knob} = "
                + " vs ".join(_fmt(v) for v in self.compare_levels)
            )
        for k, d in self.space.items():
            lines.append(f"  search:   {k}: {d.describe()}")
        fixed = ", ".join(f"{k}={_fmt(v)}" for k, v in self.fixed.items())
        lines.append(f"  fixed:    {fixed}")
        lines.append(
            f"  runs:     {self.trials} configs x {len(self.levels)} levels x "
            f"{self.repeats} seeds = {self.total_runs} training runs "
            f"({self.sampler} sampler, seed {self.seed})"
        )
        lines.append(f"  metric:   {self.metric} ({self.mode}), told to Optuna as the mean "
                     "over a configuration's runs")
        if self.compare_knob:
            by = f", broken down by {', '.join(self.verdict_by)}" if self.verdict_by else ""
            lines.append(f"  verdict:  {self.verdict_metric}, equivalence margin "
                         f"±{_fmt(self.margin)}, alpha {_fmt(self.alpha)}{by}")
        lines.append(f"  per run:  {_fmt(self.cpu)} cpu, {_fmt(self.gpu)} gpu")
        # the question, file and dataset path are the user's: shown, never obeyed
        return printable("\n".join(lines))


# --------------------------------------------------------------------------------------
# Reading raw YAML with errors that point at the field
# --------------------------------------------------------------------------------------


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, value: Any, allowed: str, problem: str = "invalid value") -> None:
        shown = _show(value)
        raise SpecError(
            f"{self.source}: field `{path}`: {problem}: {shown}. Allowed: {allowed}."
        )

    def mapping(self, path: str, value: Any, allowed_keys: Sequence[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, value, "a mapping with keys " + ", ".join(allowed_keys),
                      "expected a mapping")
        for k in value:
            if k not in allowed_keys:
                self.fail(f"{path}.{k}" if path else str(k), k,
                          "keys " + ", ".join(allowed_keys), "unknown key")
        return dict(value)

    def integer(self, path: str, value: Any, also: str | None = None) -> int:
        """An integer within LIMITS[path]; `also`: a word also allowed, named in the error
        (see `integer_or_auto`)."""
        low, high = LIMITS[path]
        allowed = (f"{also} or " if also else "") + \
            f"an integer from {_fmt(low)} to {_fmt(high)}"
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, value, allowed, "expected an integer")
        if not low <= value <= high:
            self.fail(path, value, allowed, "out of range")
        return value

    def integer_or_auto(self, path: str, value: Any) -> int | None:
        """`auto` (None: the runner chooses) or an integer within LIMITS[path]."""
        return None if value == "auto" else self.integer(path, value, also="auto")

    def number(self, path: str, value: Any, low: float | None = None,
               high: float | None = None, low_open: bool = False) -> float:
        """A finite number within [low, high] (or LIMITS[path] when not given)."""
        if low is None and high is None and path in LIMITS:
            low, high = LIMITS[path]
        desc = "a number"
        if low is not None:
            desc += f" {'>' if low_open else '>='} {_fmt(low)}"
        if high is not None:
            desc += f" and <= {_fmt(high)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, value, desc, "expected a number")
        try:
            v = float(value)
        except OverflowError:  # an int beyond a float's range
            v = math.inf
        bad = not math.isfinite(v)
        bad = bad or (low is not None and (v < low or (low_open and v == low)))
        bad = bad or (high is not None and v > high)
        if bad:
            self.fail(path, value, desc, "out of range")
        return v

    def string(self, path: str, value: Any, choices: Sequence[str] | None = None) -> str:
        """One of `choices`, or (without) a one-line string: no control characters, no
        space at either end (names, paths, URLs)."""
        allowed = "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
        if not isinstance(value, str) or not value.strip():
            self.fail(path, value, allowed, "expected a non-empty string")
        if choices is not None and value not in choices:
            self.fail(path, value, allowed)
        if choices is None and (printable(value) != value or value != value.strip()
                                or "\n" in value or "\t" in value):
            self.fail(path, value, "one line without control characters and without "
                      "spaces at either end", "unsafe characters")
        return value

    def text(self, path: str, value: Any) -> str:
        """Free text (a question): newlines and tabs allowed, other control characters
        not; surrounding space removed; at most LIMITS[path] characters."""
        if not isinstance(value, str) or not value.strip():
            self.fail(path, value, "a string", "expected a non-empty string")
        value = value.strip()
        if printable(value) != value:
            self.fail(path, value, "text without control characters (newlines and tabs "
                      "are fine)", "unsafe characters")
        _, high = LIMITS[path]
        if len(value) > high:
            self.fail(path, value, f"at most {_fmt(high)} characters", "too long")
        return value

    def knob_value(self, path: str, knob: Knob, value: Any) -> Any:
        try:
            return knob.check(value)
        except ValueError:
            self.fail(path, value, f"{knob.name} ({knob.doc}) takes {knob.allowed()}")
        raise AssertionError("unreachable")  # pragma: no cover


def _show(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 1000:  # repr fails past 4300 digits
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
    s = repr(value)
    return s if len(s) <= 80 else s[:77] + "..."


_TOP_KEYS = (
    "name", "question", "dataset", "model", "train", "space", "compare", "repeats",
    "search", "metric", "verdict", "resources", "execution", "storage",
)


def load_spec(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None,
              ) -> StudySpec:
    """Load and validate a study spec from a YAML file.

    Args:
        path: the YAML file.
        overrides: dotted keys to replace before validation, e.g. ``{"search.trials": 2}``.

    Raises:
        SpecError: naming the file, field, value and what is allowed.
    """
    source = os.fsdecode(path)
    try:
        raw = spec_yaml.parse(spec_yaml.read_bounded(path))
    except FileNotFoundError:
        raise SpecError(f"{source}: no such spec file. Bundled specs: "
                        + ", ".join(sorted(str(s) for s in _bundled_specs())) + ".") from None
    except spec_yaml.UnsafeYaml as e:
        raise SpecError(f"{source}: {e}.") from None
    return parse_spec(raw, source=source, overrides=overrides)


def load_yaml_text(text: str | bytes, source: str) -> Any:
    """A YAML document read with the spec file's bounds (no aliases, 1 MiB, nesting), for
    spec text that comes from elsewhere (a store); SpecError naming `source` if refused."""
    try:
        return spec_yaml.parse(text)
    except spec_yaml.UnsafeYaml as e:
        raise SpecError(f"{source}: {e}.") from None


def _bundled_specs() -> list[Path]:
    here = Path(__file__).resolve().parent.parent / "search_spaces"
    return sorted(here.glob("*.yaml")) if here.is_dir() else []


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any], source: str,
                    ) -> dict[str, Any]:
    """Return a copy of `raw` with dotted-key overrides applied (values as YAML scalars)."""
    out: dict[str, Any] = _deepcopy(raw)
    for dotted, value in overrides.items():
        if isinstance(value, str) and value != "":
            # as in a spec file (1e-3 is a number); text that is not YAML stays a string
            with contextlib.suppress(spec_yaml.UnsafeYaml):
                value = spec_yaml.parse(value)
        keys = [k for k in str(dotted).split(".")]
        if not all(keys):
            raise SpecError(f"{source}: override `{dotted}`: empty key in the dotted path.")
        node = out
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None or isinstance(nxt, str) and k in ("model", "dataset"):
                # `model: cnn` / `dataset: npz:PATH` shorthand grows into a mapping
                nxt = _shorthand(nxt) if isinstance(nxt, str) else {}
                node[k] = nxt
            elif not isinstance(nxt, dict):
                raise SpecError(
                    f"{source}: override `{dotted}`: `{'.'.join(keys[:i + 1])}` is "
                    f"{_show(nxt)}, not a mapping, so it has no key `{keys[i + 1]}`.")
            node = nxt
        node[keys[-1]] = value
    return out


def _shorthand(value: str) -> dict[str, Any]:
    """`cnn` -> {name: cnn}; `npz:PATH` -> {name: npz, path: PATH} (model and dataset)."""
    name, _, path = value.partition(":")
    return {"name": name} | ({"path": path} if path else {})


def _deepcopy(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


def parse_spec(raw: Any, *, source: str = "<dict>",
               overrides: Mapping[str, Any] | None = None,
               check_paths: bool = True) -> StudySpec:
    """Validate a raw (YAML-loaded) spec. See :func:`load_spec`.

    Each section is parsed by its own function, in this order (which decides the error a
    spec with several mistakes gets). `check_paths=False` skips checking that dataset
    files exist (rebuilding a report on a machine without the data)."""
    c = _Ctx(source)
    top = _parse_top(c, raw, overrides)
    name, question = _parse_name(c, top)
    dataset = _parse_dataset(c, top.get("dataset", "digits"), check_paths)
    knobs = _parse_fixed(c, top.get("model", "cnn"), top.get("train"))
    compare_knob, levels = _parse_compare(c, top.get("compare"), knobs)
    space = _parse_space(c, top.get("space"), knobs.fixed_from, compare_knob, knobs.values.get)
    # the fixed knobs: every one not searched or compared
    fixed = {k: v for k, v in knobs.values.items() if k not in space and k != compare_knob}
    repeats = c.integer("repeats", top.get("repeats", 1))
    search = _parse_search(c, top.get("search"), searched=bool(space))
    _check_run_count(c, search.trials, len(levels) or 1, repeats)
    _check_footprint(c, _Candidates(fixed, knobs.fixed_from, space, compare_knob, levels),
                     dataset, check_paths)
    metric, mode = _parse_metric(c, top.get("metric", "val_accuracy"))
    verdict = _parse_verdict(c, top.get("verdict"), compare_knob, space)
    cpu, gpu = _parse_resources(c, top.get("resources"))
    execution = _parse_execution(c, top.get("execution"))
    _check_fuse(c, knobs.fuse, fixed)
    st = c.mapping("storage", top.get("storage"), list(STORAGE_ENV))
    storage = _parse_storage(c, st, resolve_storage(st))  # the environment is read here
    # the sections' fields are StudySpec's fields of the same names
    return StudySpec(
        name=name, question=question, dataset=dataset, model=knobs.model, fixed=fixed,
        space=space, compare_knob=compare_knob, compare_levels=levels, repeats=repeats,
        **vars(search), metric=metric, mode=mode, **vars(verdict), cpu=cpu, gpu=gpu,
        **vars(execution), fuse=knobs.fuse, **vars(storage), source=source,
        raw=_deepcopy(top),
    )


def _parse_top(c: _Ctx, raw: Any, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The top-level mapping, overrides applied, its keys checked and `name` and
    `question` present."""
    if not isinstance(raw, Mapping):
        c.fail("(top level)", raw, "a mapping with keys " + ", ".join(_TOP_KEYS),
               "expected a mapping")
    if overrides:
        raw = apply_overrides(raw, overrides, c.source)
    top = c.mapping("", raw, _TOP_KEYS)
    for required in ("name", "question"):
        if required not in top:
            c.fail(required, None, "a non-empty string", "missing required field")
    return top


def _parse_name(c: _Ctx, top: Mapping[str, Any]) -> tuple[str, str]:
    """`name` (NAME_PATTERN) and `question` (free text)."""
    name = c.string("name", top["name"])
    if not _NAME_RE.fullmatch(name):
        c.fail("name", name, "letters, digits, '.', '_' and '-', starting with a letter or "
               "digit, at most 100 characters")
    return name, c.text("question", top["question"])


@dataclass(frozen=True)
class _FixedKnobs:
    """`model:` and `train:`: the model family, the fuse mode, and every knob's value
    (its default where not set) with the field each set one came from."""

    model: str
    fuse: str
    values: dict[str, Any]
    fixed_from: dict[str, str]


def _parse_fixed(c: _Ctx, model_raw: Any, train_raw: Any) -> _FixedKnobs:
    """`model: cnn` or {name: cnn, <model knobs>}; `train:` {<train knobs>, fuse}."""
    model_knobs = [k.name for k in KNOBS.values() if k.section == "model"]
    if isinstance(model_raw, str):
        model_raw = {"name": model_raw}
    model_map = c.mapping("model", model_raw, ["name", *model_knobs])
    model = c.string("model.name", model_map.pop("name", "cnn"), MODELS)
    train_knobs = [k.name for k in KNOBS.values() if k.section == "train"]
    train_map = c.mapping("train", train_raw, [*train_knobs, "fuse"])
    fuse_raw = train_map.pop("fuse", "auto")
    if isinstance(fuse_raw, bool):  # YAML reads a bare on/off as true/false
        fuse_raw = "on" if fuse_raw else "off"
    fuse = c.string("train.fuse", fuse_raw, FUSE_MODES)
    values: dict[str, Any] = {k.name: k.default for k in KNOBS.values()}
    fixed_from: dict[str, str] = {}
    for section, m in (("model", model_map), ("train", train_map)):
        for k, v in m.items():
            values[k] = c.knob_value(f"{section}.{k}", KNOBS[k], v)
            fixed_from[k] = f"{section}.{k}"
    return _FixedKnobs(model, fuse, values, fixed_from)


def _parse_compare(c: _Ctx, value: Any, knobs: _FixedKnobs) -> tuple[str | None, tuple[Any, ...]]:
    """`compare:` {knob: [level, level, ...]}: the compared knob (None: no comparison) and
    its distinct levels; a compared knob is not also fixed."""
    if value is None:
        return None, ()
    comp_map = c.mapping("compare", value, list(KNOBS))
    if len(comp_map) != 1:
        c.fail("compare", value, "exactly one knob with a list of at least two levels, "
               "e.g. {bias: [true, false]}")
    knob, levels = next(iter(comp_map.items()))
    path = f"compare.{knob}"
    lo_n, hi_n = LIMITS["levels"]
    if not isinstance(levels, list) or not lo_n <= len(levels) <= hi_n:
        c.fail(path, levels, f"a list of {_fmt(lo_n)} to {_fmt(hi_n)} distinct levels")
    checked = [c.knob_value(f"{path}[{i}]", KNOBS[knob], v) for i, v in enumerate(levels)]
    if len(set(map(repr, checked))) != len(checked):
        c.fail(path, levels, "distinct levels (a level is repeated)")
    if knob in knobs.fixed_from:
        c.fail(knobs.fixed_from[knob], knobs.values[knob],
               f"a knob set in one place only: {knob} is also compared "
               f"in `{path}`", "set twice")
    return knob, tuple(checked)


@dataclass(frozen=True)
class _Search:
    """`search:`; the fields are StudySpec's of the same names."""

    sampler: str
    trials: int
    seed: int
    startup_trials: int
    pending: int
    scheduler: str
    grace_period: int
    reduction_factor: int


def _parse_search(c: _Ctx, value: Any, searched: bool) -> _Search:
    """`search:` the sampler, trials and scheduler; `searched`: `space` is not empty."""
    search = c.mapping("search", value,
                       ["sampler", "trials", "seed", "startup_trials", "pending", "scheduler",
                        "grace_period", "reduction_factor"])
    out = _Search(
        sampler=c.string("search.sampler", search.get("sampler", "tpe"), SAMPLERS),
        trials=c.integer("search.trials", search.get("trials", 8 if searched else 1)),
        seed=c.integer("search.seed", search.get("seed", 0)),
        startup_trials=c.integer("search.startup_trials", search.get("startup_trials", 10)),
        pending=c.integer("search.pending", search.get("pending", 4)),
        scheduler=c.string("search.scheduler", search.get("scheduler", "fifo"),
                           ["fifo", "asha"]),
        grace_period=c.integer("search.grace_period", search.get("grace_period", 1)),
        reduction_factor=c.integer("search.reduction_factor",
                                   search.get("reduction_factor", 3)),
    )
    if out.scheduler == "fifo":
        for k in ("grace_period", "reduction_factor"):
            if k in search:
                c.fail(f"search.{k}", search[k], "this only with `scheduler: asha`",
                       "unused setting")
    if not searched and out.trials > 1:
        c.fail("search.trials", out.trials, "1 when `space` is empty (nothing to search: "
               "use `repeats` for more seeds)")
    return out


def _check_run_count(c: _Ctx, trials: int, levels: int, repeats: int) -> None:
    """trials x levels x repeats within LIMITS["runs"]."""
    runs = trials * levels * repeats
    if runs > LIMITS["runs"][1]:
        c.fail("search.trials", trials, f"trials x levels x repeats at most "
               f"{_fmt(LIMITS['runs'][1])} (here {trials} x {levels} x "
               f"{repeats} = {runs}): split the study", "too many runs")


def _parse_metric(c: _Ctx, value: Any) -> tuple[str, str]:
    """`metric: NAME` or {name, mode}: the metric Optuna optimizes and its direction."""
    if isinstance(value, str):
        value = {"name": value}
    metric_map = c.mapping("metric", value, ["name", "mode"])
    metric = c.string("metric.name", metric_map.get("name", "val_accuracy"), list(METRICS))
    mode = c.string("metric.mode", metric_map.get("mode", METRICS[metric]), ["max", "min"])
    return metric, mode


@dataclass(frozen=True)
class _Verdict:
    """`verdict:`; the fields are StudySpec's of the same names."""

    verdict_metric: str
    verdict_mode: str
    margin: float
    verdict_by: tuple[str, ...]
    alpha: float


def _parse_verdict(c: _Ctx, value: Any, compare_knob: str | None,
                   space: Mapping[str, Dist]) -> _Verdict:
    """`verdict:` (only with `compare:`): metric, margin, alpha and searched knobs to
    break the effect down by."""
    vd = c.mapping("verdict", value, ["metric", "mode", "equivalence_margin", "by", "alpha"])
    if vd and not compare_knob:
        c.fail("verdict", value, "a `verdict:` only together with `compare:` "
               "(the verdict is about the compared knob)", "nothing to compare")
    verdict_metric = c.string("verdict.metric", vd.get("metric", "test_accuracy"),
                              list(METRICS))
    verdict_mode = c.string("verdict.mode", vd.get("mode", METRICS[verdict_metric]),
                            ["max", "min"])
    margin = c.number("verdict.equivalence_margin", vd.get("equivalence_margin", 0.005),
                      *LIMITS["verdict.equivalence_margin"], low_open=True)
    by_raw = vd.get("by", [])
    by_list = [by_raw] if isinstance(by_raw, str) else by_raw
    if not isinstance(by_list, list):
        c.fail("verdict.by", by_raw, "a searched knob or a list of them")
    for i, b in enumerate(by_list):
        if not isinstance(b, str) or b not in space:
            c.fail(f"verdict.by[{i}]" if isinstance(by_raw, list) else "verdict.by", b,
                   "a knob searched in `space` (it must vary to break the effect down): "
                   + (", ".join(space) or "none is searched"))
    alpha = c.number("verdict.alpha", vd.get("alpha", 0.05), *LIMITS["verdict.alpha"],
                     low_open=True)
    return _Verdict(verdict_metric, verdict_mode, margin, tuple(by_list), alpha)


def _parse_resources(c: _Ctx, value: Any) -> tuple[float, float]:
    """`resources:` CPUs and GPUs per run (a GPU fraction only below one)."""
    res = c.mapping("resources", value, ["cpu", "gpu"])
    cpu = c.number("resources.cpu", res.get("cpu", 1), *LIMITS["resources.cpu"], low_open=True)
    gpu = c.number("resources.gpu", res.get("gpu", 0))
    if gpu > 1 and not gpu.is_integer():
        c.fail("resources.gpu", res.get("gpu"), "a fraction in (0, 1] or a whole number of "
               "GPUs")
    return cpu, gpu


@dataclass(frozen=True)
class _Execution:
    """`execution:`; the fields are StudySpec's of the same names."""

    concurrency: int | None
    retries: int
    checkpoint_every: int | None
    runs_per_trial: int | None


def _parse_execution(c: _Ctx, value: Any) -> _Execution:
    """`execution:` concurrency, retries, checkpoints and runs per Tune trial."""
    ex = c.mapping("execution", value,
                   ["concurrency", "retries", "checkpoint_every", "runs_per_trial"])
    conc_raw = ex.get("concurrency")
    return _Execution(
        concurrency=None if conc_raw is None else c.integer("execution.concurrency",
                                                            conc_raw),
        retries=c.integer("execution.retries", ex.get("retries", 2)),
        checkpoint_every=c.integer_or_auto("execution.checkpoint_every",
                                           ex.get("checkpoint_every", "auto")),
        runs_per_trial=c.integer_or_auto("execution.runs_per_trial",
                                         ex.get("runs_per_trial", "auto")),
    )


def _check_fuse(c: _Ctx, fuse: str, fixed: Mapping[str, Any]) -> None:
    """`train.fuse: on` needs one loss scaler per fused model: not with fp16 fixed."""
    if fuse == "on" and fixed.get("precision") == "fp16":
        c.fail("train.fuse", "on", "auto or off with `train.precision: fp16` (one loss "
               "scaler cannot serve several fused models); or precision fp32/bf16")


@dataclass(frozen=True)
class _Storage:
    """`storage:`; the fields are StudySpec's of the same names."""

    optuna_storage: str
    tracking_uri: str
    results_dir: str


# Where each store is when `storage:` does not say: key -> (environment variable, default)
STORAGE_ENV: dict[str, tuple[str, str]] = {
    "optuna": ("STUDY_OPTUNA_STORAGE", "sqlite:///optuna.db"),  # any SQLAlchemy URL
    "tracking": ("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),  # MLflow's own variable
    "results": ("STUDY_RESULTS_DIR", "study_results"),  # Ray Tune's folder
}


def resolve_storage(section: Mapping[str, Any],
                    environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Where each store is: for each key of STORAGE_ENV, the spec's `storage.<key>`, else
    its environment variable in `environ` (default: os.environ), else its default; an
    empty value counts as unset. The values are not checked here (see _parse_storage)."""
    env = os.environ if environ is None else environ
    return {key: section.get(key) or env.get(var) or default
            for key, (var, default) in STORAGE_ENV.items()}


def _parse_storage(c: _Ctx, st: Mapping[str, Any], where: Mapping[str, Any]) -> _Storage:
    """`storage:` checked: `st` the spec's section, `where` resolved by resolve_storage
    (what comes from the environment is checked too, except MLflow's URI); relative
    SQLite paths made absolute."""
    optuna_storage = c.string("storage.optuna", where["optuna"])
    if "://" not in optuna_storage:
        c.fail("storage.optuna", optuna_storage, "an SQLAlchemy URL such as "
               "sqlite:///optuna.db or postgresql://user:pw@host/db")
    if st.get("tracking"):
        c.string("storage.tracking", st["tracking"])
    tracking_uri = _absolute_sqlite(where["tracking"])
    optuna_storage = _absolute_sqlite(optuna_storage)
    results_dir = c.string("storage.results", where["results"])
    return _Storage(optuna_storage, tracking_uri, results_dir)


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The MLflow store: `explicit`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db;
    a relative SQLite path made absolute."""
    return _absolute_sqlite(resolve_storage({"tracking": explicit})["tracking"])


def _absolute_sqlite(url: str) -> str:
    """sqlite:///rel.db -> sqlite:////abs/cwd/rel.db: one file, whatever the process' cwd
    later (Ray workers, `ray job submit`, in-process caches keyed by URL)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and \
            url != prefix + ":memory:":
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


@dataclass(frozen=True)
class _Candidates:
    """Every value a knob can take in a study, and where the spec sets it."""

    fixed: Mapping[str, Any]
    fixed_from: Mapping[str, str]
    space: Mapping[str, Dist]
    compare_knob: str | None
    compare_levels: tuple[Any, ...]

    def values(self, k: str) -> tuple[Any, ...]:
        if k == self.compare_knob:
            return self.compare_levels
        d = self.space.get(k)
        if d is None:
            return (self.fixed[k],)
        # a conditional knob whose condition fails takes its default
        default = (KNOBS[k].default,) if d.when else ()
        if d.kind == "choice":
            return d.choices + default
        if d.kind == "int":
            return tuple(range(int(d.low), int(d.high) + 1)) + default
        return (d.low, d.high) + default

    def where(self, k: str) -> str:
        if k == self.compare_knob:
            return f"compare.{k}"
        if k in self.space:
            return f"space.{k}"
        return self.fixed_from.get(k, "default")


def _input_shape(ds: DatasetSpec, check_paths: bool) -> tuple[tuple[int, int, int] | None, int]:
    """(channels, height, width) of the dataset's images (None: unknown here), classes."""
    if ds.name == "synthetic":
        return (ds.channels, ds.image_size, ds.image_size), ds.classes
    known = {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}
    if ds.name in known:
        return known[ds.name], 10
    shape = footprint.file_input_shape(ds.name, ds.path) if check_paths and ds.path else None
    return shape, 10  # file datasets: the classes are in the labels; 10 for the estimate


def _check_footprint(c: _Ctx, cand: _Candidates, ds: DatasetSpec, check_paths: bool) -> None:
    """Refuse a study whose largest model (over every value each knob can take) has more
    than footprint.MAX_PARAMS parameters or keeps more than MAX_ACTIVATION_BYTES per run."""
    shape, classes = _input_shape(ds, check_paths)
    top = {k: max(cand.values(k)) for k in ("width", "fc_layers", "fc_width", "batch_size")}
    flags = {"norm": "batch" in cand.values("norm"), "residual": any(cand.values("residual")),
             "zero_gain": "zero" in cand.values("branch_init")}
    depths = sorted(set(cand.values("depth")))
    params = footprint.param_count(
        in_channels=shape[0] if shape else 3, classes=classes, depth=depths[-1],
        width=top["width"], bias=any(cand.values("bias")),
        norm="batch" if flags["norm"] else "none", residual=flags["residual"],
        zero_gain=flags["zero_gain"], fc_layers=top["fc_layers"], fc_width=top["fc_width"],
        fc_bias=any(cand.values("fc_bias")))
    at = ", ".join(f"{k} {_fmt(v)} ({cand.where(k)})" for k, v in
                   [("depth", depths[-1]), *((k, top[k]) for k in ("width", "fc_layers",
                                                                   "fc_width"))])
    if params > footprint.MAX_PARAMS:
        raise SpecError(f"{c.source}: field `{cand.where('width')}`: model too large: up to "
                        f"{params:.2g} parameters at {at}. Allowed: at most "
                        f"{footprint.MAX_PARAMS:.0e} parameters per model (lower depth, "
                        "width or fc_width).")
    if shape is None:
        return
    per_example = max(footprint.activation_values(
        in_channels=shape[0], height=shape[1], width_px=shape[2], depth=d,
        width=top["width"], norm="batch" if flags["norm"] else "none",
        residual=flags["residual"], zero_gain=flags["zero_gain"],
        fc_layers=top["fc_layers"], fc_width=top["fc_width"], classes=classes)
        for d in depths)
    act = per_example * top["batch_size"] * footprint.BYTES_PER_VALUE
    if act > footprint.MAX_ACTIVATION_BYTES:
        gib = 2**30
        raise SpecError(
            f"{c.source}: field `{cand.where('batch_size')}`: activations too large: up to "
            f"{act / gib:.3g} GiB per run at batch_size {top['batch_size']} "
            f"({cand.where('batch_size')}), {at}, {shape[1]}x{shape[2]} inputs. Allowed: "
            f"at most {footprint.MAX_ACTIVATION_BYTES / gib:.0f} GiB per run (lower "
            "batch_size, width or depth).")


_DATASET_KEYS = ("name", "path", "val_fraction", "test_fraction", "split_seed", "limit",
                 "samples", "image_size", "channels", "classes")


def _dataset_path(c: _Ctx, name: str, path: Any, check_paths: bool) -> tuple[str, str | None]:
    """`dataset.path`: required by file datasets and, with check_paths, usable; the
    fashion-mnist name becomes idx with Debian's folder as default path."""
    if path is not None:
        path = c.string("dataset.path", path)
    if name == "fashion-mnist":
        name, path = "idx", path or FASHION_MNIST_DIR
        if check_paths and not Path(path).is_dir():
            c.fail("dataset.path", path, "a folder with Fashion-MNIST's IDX files (on Debian "
                   "or Ubuntu: `apt-get install dataset-fashion-mnist` puts them in "
                   f"{FASHION_MNIST_DIR}; or download them from "
                   "github.com/zalandoresearch/fashion-mnist)", "no such folder")
    if name in ("npz", "idx", "cifar10") and path is None:
        hint = {
            "npz": "a .npz file with arrays x_train, y_train, x_test, y_test: "
                   "`dataset: npz:PATH`",
            "idx": "a folder of MNIST-format IDX files: `dataset: idx:DIR`",
            "cifar10": "the folder `cifar-10-batches-py` (python version from "
                       "www.cs.toronto.edu/~kriz/cifar.html, unpacked): `dataset: cifar10:DIR`",
        }[name]
        c.fail("dataset.path", None, hint, "missing path")
    if check_paths and path is not None and name != "synthetic":
        from study import data_formats  # light: numpy only

        problem = data_formats.check_path(name, path)
        if problem:
            c.fail("dataset.path", path, problem, "unusable dataset path")
    return name, path


def _parse_dataset(c: _Ctx, value: Any, check_paths: bool = True) -> DatasetSpec:
    """`dataset:` a name, `name:PATH` or a mapping of _DATASET_KEYS."""
    if isinstance(value, str):
        value = _shorthand(value)
    d = c.mapping("dataset", value, _DATASET_KEYS)
    name = c.string("dataset.name", d.get("name", "digits"), DATASETS)
    name, path = _dataset_path(c, name, d.get("path"), check_paths)
    limit = d.get("limit")
    spec = DatasetSpec(
        name=name,
        path=path,
        val_fraction=c.number("dataset.val_fraction", d.get("val_fraction", 0.1), 0.0, 0.9),
        test_fraction=c.number("dataset.test_fraction", d.get("test_fraction", 0.2),
                               0.0, 0.9, low_open=True),
        split_seed=c.integer("dataset.split_seed", d.get("split_seed", 0)),
        limit=None if limit is None else c.integer("dataset.limit", limit),
        samples=c.integer("dataset.samples", d.get("samples", 600)),
        image_size=c.integer("dataset.image_size", d.get("image_size", 8)),
        channels=c.integer("dataset.channels", d.get("channels", 1)),
        classes=c.integer("dataset.classes", d.get("classes", 10)),
    )
    if spec.name == "synthetic":
        values = spec.samples * spec.channels * spec.image_size ** 2
        _, most = LIMITS["synthetic_values"]
        if values > most:
            c.fail("dataset.samples", spec.samples, f"samples x channels x image_size^2 at "
                   f"most {most:.0e} (synthetic data is generated in memory; here "
                   f"{values:.2g})", "too much synthetic data")
    return spec


_SPACE_FORMS = ("{choice: [a, b, ...]}, {int: [low, high]}, {float: [low, high]} or "
                "{log: [low, high]}")


def _parse_space(c: _Ctx, value: Any, fixed_from: Mapping[str, str],
                 compare_knob: str | None, fixed_value: Any) -> dict[str, Dist]:
    """`space:` {knob: distribution}; a searched knob is neither fixed nor compared."""
    space_map = c.mapping("space", value, list(KNOBS))
    out: dict[str, Dist] = {}
    for k, spec in space_map.items():
        path = f"space.{k}"
        if k in fixed_from:
            c.fail(fixed_from[k], fixed_value(k), f"a knob set in one place only: {k} is also "
                   "searched "
                   f"in `{path}`", "set twice")
        if k == compare_knob:
            c.fail(path, spec, f"a knob that is not also compared (`compare.{k}`)", "set twice")
        out[k] = _parse_dist(c, path, KNOBS[k], spec)
    _check_conditions(c, out, compare_knob)
    return out


def _parse_dist(c: _Ctx, path: str, knob: Knob, spec: Any) -> Dist:
    """One `space.<knob>`: exactly one of the _SPACE_FORMS, with `step` and `when`."""
    m = c.mapping(path, spec, ["choice", "int", "float", "log", "step", "when"])
    kinds = [f for f in ("choice", "int", "float", "log") if f in m]
    if len(kinds) != 1:
        c.fail(path, spec, f"exactly one of {_SPACE_FORMS}")
    form = kinds[0]
    when = _parse_when(c, f"{path}.when", m.get("when"), knob.name)
    if form == "choice":
        return _parse_choice(c, path, knob, m, when)
    return _parse_range(c, path, knob, spec, m, form, when)


def _parse_choice(c: _Ctx, path: str, knob: Knob, m: Mapping[str, Any],
                  when: dict[str, tuple[Any, ...]]) -> Dist:
    """`{choice: [a, b, ...]}`: distinct legal values of the knob, no `step`."""
    ch = m["choice"]
    if not isinstance(ch, list) or not ch:
        c.fail(f"{path}.choice", ch, f"a non-empty list of values; {knob.name} takes "
               f"{knob.allowed()}", "empty or not a list")
    if len(ch) > LIMITS["choices"][1]:
        c.fail(f"{path}.choice", ch, f"at most {_fmt(LIMITS['choices'][1])} values",
               "too many values")
    vals = tuple(c.knob_value(f"{path}.choice[{i}]", knob, v) for i, v in enumerate(ch))
    if len(set(map(repr, vals))) != len(vals):
        c.fail(f"{path}.choice", ch, "distinct values (a value is repeated)")
    if "step" in m:
        c.fail(f"{path}.step", m["step"], "`step` only with int or float ranges",
               "unknown key")
    return Dist("choice", choices=vals, when=when)


def _parse_range(c: _Ctx, path: str, knob: Knob, spec: Any, m: Mapping[str, Any], form: str,
                 when: dict[str, tuple[Any, ...]]) -> Dist:
    """`{int|float|log: [low, high]}` (+ `step`) of a numeric knob, in the knob's bounds."""
    k = knob.name
    if knob.kind not in (int, float):
        c.fail(path, spec, f"{{choice: [...]}}: {k} takes {knob.allowed()}",
               f"a range does not fit a {knob.kind.__name__} knob")
    rng = m[form]
    if not (isinstance(rng, list) and len(rng) == 2):
        c.fail(f"{path}.{form}", rng, "a list [low, high]")
    lo = c.knob_value(f"{path}.{form}[0]", knob, rng[0])
    hi = c.knob_value(f"{path}.{form}[1]", knob, rng[1])
    if lo > hi:
        c.fail(f"{path}.{form}", rng, f"low <= high (low={_fmt(lo)}, high={_fmt(hi)})",
               "low > high")
    log = form == "log"
    if log and lo <= 0:
        c.fail(f"{path}.log", rng, "a range with low > 0 for a log scale")
    kind = "int" if knob.kind is int else "float"
    if form == "int" and knob.kind is float:
        c.fail(path, spec, f"{{float: [low, high]}} or {{log: [low, high]}}: {k} is a number",
               "an int range for a float knob")
    if form == "float" and knob.kind is int:
        c.fail(path, spec, f"{{int: [low, high]}}: {k} is an integer",
               "a float range for an integer knob")
    step = m.get("step")
    if step is not None:
        step = c.number(f"{path}.step", step, low=0.0, high=knob.high, low_open=True)
        if log:
            c.fail(f"{path}.step", step, "no step with a log range", "conflict")
        if kind == "int" and not float(step).is_integer():
            c.fail(f"{path}.step", step, "a whole number for an integer knob")
    return Dist(kind, low=lo, high=hi, step=step, log=log, when=when)


def _check_conditions(c: _Ctx, space: Mapping[str, Dist], compare_knob: str | None) -> None:
    """Each `when` is on a knob searched unconditionally or compared (no chains)."""
    for k, d in space.items():
        for cond in d.when:
            if cond in space and space[cond].when:
                c.fail(f"space.{k}.when.{cond}", dict(d.when), "a condition on a knob that is "
                       "itself unconditional (no chains of `when`)")
            if cond not in space and cond != compare_knob:
                c.fail(f"space.{k}.when.{cond}", cond, "a knob that is searched in `space` or "
                       f"compared; searched: {', '.join(space) or 'none'}",
                       "condition on a knob that is neither searched nor compared")


def _parse_when(c: _Ctx, path: str, value: Any, knob_name: str) -> dict[str, tuple[Any, ...]]:
    if value is None:
        return {}
    m = c.mapping(path, value, [k for k in KNOBS if k != knob_name])
    out = {}
    for k, v in m.items():
        vals = v if isinstance(v, list) else [v]
        if not vals:
            c.fail(f"{path}.{k}", v, "a value or a non-empty list of values")
        out[k] = tuple(c.knob_value(f"{path}.{k}", KNOBS[k], x) for x in vals)
    return out
