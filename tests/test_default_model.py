"""New knobs at their defaults build today's model exactly: the initial state_dict and one
training step hash to the values recorded from the code before those knobs existed."""

from __future__ import annotations

import hashlib

import pytest
import torch

from study.data.load import load_tensors
from study.spec import KNOBS, DatasetSpec
from study.train.models import build_model
from study.train.trainer import train_run

BASE = {k.name: k.default for k in KNOBS.values()} | {"seed": 3}
DATA = DatasetSpec("synthetic", samples=120)

# hashes recorded with the code of commit f57ef38 (before kernel, stride, dropout, trunc_normal,
# per-layer bias constants and steps)
RECORDED = {
    "default": ("ba02d03e9a454535", "5a255356f548e217"),
    "fc_bn_bias": ("52ef2c039ebc52ac", "edc118c6a8d2042e"),
    "residual_zero_xavier": ("c86c240d2d60a6ba", "3ddf4e91289f1b8d"),
    "no_bias_default_init_avg": ("b372254fcf5b57a0", "d5ae3d77e085ff4d"),
}
CASES = {
    "default": {},
    "fc_bn_bias": {"fc_layers": 2, "norm": "batch", "bias_init": 0.1, "fc_bias_init": 1.0},
    "residual_zero_xavier": {"residual": True, "branch_init": "zero", "init": "xavier",
                             "depth": 6},
    "no_bias_default_init_avg": {"bias": False, "init": "default", "pool": "avg",
                                 "fc_bias": False},
}


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def hashes(case: str) -> tuple[str, str]:
    torch.set_num_threads(1)
    run = BASE | CASES[case] | {"epochs": 1, "batch_size": 200}  # one epoch = one step
    data = load_tensors(DATA)
    init = digest(build_model(run, data.input_shape, data.num_classes).state_dict())
    states = {}
    train_run(run, data, on_epoch=lambda m, o, snap: states.setdefault("s", snap()))
    return init, digest(states["s"]["model"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_defaults_reproduce_the_model_before_the_new_knobs(case):
    assert hashes(case) == RECORDED[case]
