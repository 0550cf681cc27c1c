"""The pairing contract, end to end from a spec: the arms of a pair start from identical
shared parameters, see the same batches in the same order, and only the factor differs."""

from __future__ import annotations

import torch

import study.train.trainer as train_mod
from study.data.load import load_tensors
from study.search.space import expand_runs
from study.spec import parse_spec
from study.train.models import build_model
from tests.conftest import tiny_spec


def test_arms_of_a_pair_share_init_and_batches(monkeypatch):
    spec = parse_spec(tiny_spec(repeats=2, model={"name": "cnn", "width": 6, "norm": "none"},
                                compare={"bias": [True, False]},
                                space={"depth": {"int": [1, 3]},
                                       "bias_init": {"choice": [0.1], "when": {"bias": True}}}))
    runs = expand_runs(spec, 0, {"depth": 3, "bias_init": 0.1})
    assert [(r["seed"], r["bias"]) for r in runs] == [(3, True), (3, False), (4, True),
                                                     (4, False)]
    on, off, other_seed = runs[0], runs[1], runs[2]
    for key in ("depth", "width", "lr", "seed", "epochs", "batch_size", "pair"):
        assert on[key] == off[key]
    assert on["pair"] != other_seed["pair"]

    data = load_tensors(spec.dataset)
    m_on = build_model(on, data.input_shape, data.num_classes)
    m_off = build_model(off, data.input_shape, data.num_classes)
    p_on, p_off = dict(m_on.named_parameters()), dict(m_off.named_parameters())
    assert set(p_on) - set(p_off) == {f"units.{i}.conv.bias" for i in range(3)}
    for name in p_off:
        assert torch.equal(p_on[name], p_off[name]), name

    def batches_seen(run):
        seen = []
        real_build = train_mod.build_model

        def build_and_watch(*a, **k):
            model = real_build(*a, **k)
            model.register_forward_pre_hook(
                lambda mod, inp: seen.append(float(inp[0].sum())) if mod.training else None)
            return model

        monkeypatch.setattr(train_mod, "build_model", build_and_watch)
        train_mod.train_run(run, data)
        monkeypatch.setattr(train_mod, "build_model", real_build)
        return seen

    b_on, b_off, b_other = batches_seen(on), batches_seen(off), batches_seen(other_seed)
    steps = spec.fixed["epochs"] * -(-len(data.x_train) // spec.fixed["batch_size"])
    assert len(b_on) == steps
    assert b_on == b_off  # same batches, same order
    assert b_on != b_other  # another seed, another order
