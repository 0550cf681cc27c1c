"""Refuse a study whose worst-case model is too large, before any run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from study.errors import SpecError
from study.spec import footprint
from study.spec.context import Context
from study.spec.knobs import KNOBS, fmt_number
from study.spec.model import DatasetSpec, Dist


@dataclass(frozen=True)
class Candidates:
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


def _worst(cand: Candidates) -> dict[str, Any]:
    """The knob values that make the largest model (each knob on its own)."""
    top = {k: max(cand.values(k)) for k in ("width", "fc_layers", "fc_width", "batch_size",
                                            "kernel")}
    return top | {
        "norm": "batch" if "batch" in cand.values("norm") else "none",
        "residual": any(cand.values("residual")),
        "zero_gain": "zero" in cand.values("branch_init"),
        "stride": min(cand.values("stride")),  # the least downsampling: the largest maps
        "pool": "none" if "none" in cand.values("pool") else "max",
        "flatten": any(cand.values("flatten")),
        "conv_dropout": max(cand.values("conv_dropout")),
        "dropout": max(cand.values("dropout")),
    }


def check_footprint(c: Context, cand: Candidates, ds: DatasetSpec, check_paths: bool) -> None:
    """Refuse a study whose largest model (over every value each knob can take) has more
    than footprint.MAX_PARAMS parameters or keeps more than MAX_ACTIVATION_BYTES per run."""
    shape, classes = _input_shape(ds, check_paths)
    top = _worst(cand)
    depths = sorted(set(cand.values("depth")))
    head_in = top["width"]
    if top["flatten"] and shape is not None:  # the largest last map: at the least depth
        fh, fw = footprint.final_map(depths[0], shape[1], shape[2], top["stride"], top["pool"])
        head_in *= fh * fw
    params = footprint.param_count(
        in_channels=shape[0] if shape else 3, classes=classes, depth=depths[-1],
        width=top["width"], bias=any(cand.values("bias")), norm=top["norm"],
        residual=top["residual"], zero_gain=top["zero_gain"], fc_layers=top["fc_layers"],
        fc_width=top["fc_width"], fc_bias=any(cand.values("fc_bias")), kernel=top["kernel"],
        head_in=head_in)
    at = ", ".join(f"{k} {fmt_number(v)} ({cand.where(k)})" for k, v in
                   [("depth", depths[-1]), *((k, top[k]) for k in ("width", "kernel",
                                                                   "fc_layers", "fc_width"))])
    if params > footprint.MAX_PARAMS:
        raise SpecError(f"{c.source}: field `{cand.where('width')}`: model too large: up to "
                        f"{params:.2g} parameters at {at}. Allowed: at most "
                        f"{footprint.MAX_PARAMS:.0e} parameters per model (lower depth, "
                        "width, kernel or fc_width).")
    if shape is None:
        return
    per_example = max(footprint.activation_values(
        in_channels=shape[0], height=shape[1], width_px=shape[2], depth=d,
        width=top["width"], norm=top["norm"], residual=top["residual"],
        zero_gain=top["zero_gain"], fc_layers=top["fc_layers"], fc_width=top["fc_width"],
        classes=classes, kernel=top["kernel"], stride=top["stride"], pool=top["pool"],
        flatten=top["flatten"], conv_dropout=top["conv_dropout"], dropout=top["dropout"])
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
