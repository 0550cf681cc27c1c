"""The pairing contract, end to end from a spec: the arms of a pair start from identical
shared parameters, see the same batches in the same order, and only the factor differs."""

from __future__ import annotations

import pytest
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


# The value each model knob takes in the parametrized pairing test below (its default is
# tested too): a knob added to the cnn family without a value here fails the coverage test.
KNOB_VALUES = {
    "depth": 5, "width": 6, "kernel": 5, "stride": 2, "bias": False,
    "bias_init": "0, 1, 0, 1, 1, 0...", "norm": "batch", "residual": True,
    "branch_init": "zero", "init": "trunc_normal", "init_std": 0.05, "pool": "none",
    "flatten": True, "conv_dropout": 0.2, "fc_layers": 2, "fc_width": 9, "fc_bias": False,
    "fc_bias_init": "[1, 1, 0]", "dropout": 0.5,
}
# the arms a study can compare that keep the parameters shared (the factor is a bias)
ARMS = [{"bias": True, "bias_init": 0.5}, {"bias": False}, {"bias_init": "0, 1..."},
        {"bias_init": 1.0, "fc_bias_init": "2..."}, {"fc_bias": False},
        {"fc_bias_init": 0.25}]


def test_every_model_knob_is_covered_by_the_pairing_test():
    from study.spec import FAMILIES

    assert set(KNOB_VALUES) == set(FAMILIES["cnn"].knobs)


def _run(**kw):
    from study.spec import KNOBS

    run = {k.name: k.default for k in KNOBS.values()} | {"seed": 11, "depth": 3, "width": 4}
    for k, v in kw.items():
        run[k] = KNOBS[k].check(v)
    if run["stride"] > 1:
        run["residual"] = False  # the spec refuses shortcuts with strides
    return run


@pytest.mark.parametrize("knob", sorted(KNOB_VALUES))
def test_arms_share_every_initial_value_for_every_knob(knob):
    base = {knob: KNOB_VALUES[knob]}
    if knob in ("bias", "fc_bias", "bias_init", "fc_bias_init"):
        base = {}  # these are the arms themselves
    if knob == "fc_bias_init":
        base = {"fc_layers": 2}
    models = [build_model(_run(**base, **arm), (1, 12, 12), 10) for arm in ARMS]
    for other in models[1:]:
        pa, pb = dict(models[0].named_parameters()), dict(other.named_parameters())
        shared = [n for n in pa if n in pb and (n.endswith("weight") or "norm" in n
                                                 or n.endswith("gain"))]
        assert shared and all(torch.equal(pa[n], pb[n]) for n in shared)
        assert {n for n in pa if n.endswith("weight")} == {n for n in pb if
                                                          n.endswith("weight")}


@pytest.mark.parametrize("knob", ["dropout", "conv_dropout"])
def test_arms_of_a_pair_draw_the_same_dropout_masks(knob):
    data = load_tensors(parse_spec(tiny_spec()).dataset)
    seen = {}
    for name, arm in (("on", {"bias": True, "bias_init": 0.5}), ("off", {"bias": False}),
                      ("seed", {"bias": False})):
        run = _run(**{knob: 0.5, "fc_layers": 1, "epochs": 2, "batch_size": 32}, **arm)
        run["seed"] = 12 if name == "seed" else 11
        trainer = train_mod.Trainer(run, data)
        shapes = []
        for m in trainer.model.modules():
            if type(m).__name__ == "SeededDropout":
                m.register_forward_pre_hook(lambda mod, inp, s=shapes: s.append(inp[0].shape))
        while not trainer.done:
            trainer.epoch()
        seen[name] = (shapes, trainer.masks.get_state())
    # same seed, same shapes in the same order, same generator state: the same masks
    assert seen["on"][0] and seen["on"][0] == seen["off"][0]
    assert torch.equal(seen["on"][1], seen["off"][1])
    assert not torch.equal(seen["on"][1], seen["seed"][1])
