"""The model registry: each family's name, its builder and the `model:` knobs it reads.

The spec parser takes the names and knobs from here, the training stage the builder, so a
new family is one `register_family` call (and its knobs in study.spec.knobs.KNOBS) without
a change to the parser. Builders are named as "module:function" and imported only when a
model is built: the spec stage imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from study.spec.knobs import KNOBS

__all__ = ["FAMILIES", "Family", "builder_of", "register_family",
           "unregister_family"]

# builder(run, input_shape, num_classes) -> an initialised torch.nn.Module on the CPU
Builder = Callable[[Mapping[str, Any], tuple[int, int, int], int], Any]


@dataclass(frozen=True)
class Family:
    name: str
    builder: str | Builder  # "module:function", or the function itself
    knobs: tuple[str, ...]  # the model knobs (KNOBS, section "model") the family reads
    doc: str = ""
    # the spec stage refuses a too large worst-case model (study.spec.size_check): the
    # formulas there are the cnn family's, so other families skip the check
    size_checked: bool = False


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
    """Add a family; ValueError for a taken name or a knob that is not a model knob."""
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    unknown = [k for k in family.knobs if k not in KNOBS or KNOBS[k].section != "model"]
    if unknown:
        raise ValueError(f"model family {family.name!r}: {unknown} are not model knobs of "
                         "study.spec.knobs.KNOBS")
    FAMILIES[family.name] = family


def unregister_family(name: str) -> None:
    FAMILIES.pop(name, None)


def builder_of(name: str) -> Builder:
    """The family's builder function; KeyError naming the known families."""
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    b = FAMILIES[name].builder
    if callable(b):
        return b
    module, _, attr = b.partition(":")
    return getattr(importlib.import_module(module), attr)


register_family(Family(
    name="cnn",
    builder="study.train.models:build_cnn",
    knobs=tuple(k.name for k in KNOBS.values() if k.section == "model"),
    doc="plain or residual CNN: conv layers, optional pooling, a fully connected head",
    size_checked=True,
))
