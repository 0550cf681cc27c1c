"""The cnn family: sizes, shapes at every depth, the bit-identical init contract."""

from __future__ import annotations

import pytest
import torch

from study.data.load import load_tensors
from study.spec import KNOBS, DatasetSpec
from study.train.models import build_model, model_stats, pool_positions
from study.train.trainer import train_run

BASE = {k.name: k.default for k in KNOBS.values()} | {"seed": 0}


def run_of(**kw):
    return BASE | kw


def expected_params(c, d, w, k, *, bias, norm, fc_bias=True):
    n = c * w * 9 + (d - 1) * w * w * 9
    n += d * w if bias else 0
    n += 2 * d * w if norm == "batch" else 0
    n += w * k + (k if fc_bias else 0)
    return n


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_parameter_counts(bias, norm):
    for d, w in [(1, 8), (3, 16), (7, 5)]:
        m = build_model(run_of(depth=d, width=w, bias=bias, norm=norm), (3, 32, 32), 10)
        st = model_stats(m, (3, 32, 32))
        assert st.params == expected_params(3, d, w, 10, bias=bias, norm=norm)


def test_zero_branch_init_adds_one_gain_per_residual_unit_and_starts_as_identity():
    plain = build_model(run_of(depth=6, width=8, residual=True), (1, 8, 8), 10)
    skip = build_model(run_of(depth=6, width=8, residual=True, branch_init="zero"), (1, 8, 8),
                       10)
    assert model_stats(skip, (1, 8, 8)).params == model_stats(plain, (1, 8, 8)).params + 5
    x = torch.relu(torch.randn(2, 8, 4, 4))
    assert torch.equal(skip.units[3](x), x)  # gain 0: the unit is the identity on ReLU inputs
    equal, _ = shared_params_equal(plain, skip)
    assert equal


def test_bias_off_removes_exactly_the_conv_biases():
    on = build_model(run_of(depth=5, width=16, bias=True), (1, 8, 8), 10)
    off = build_model(run_of(depth=5, width=16, bias=False), (1, 8, 8), 10)
    assert model_stats(on, (1, 8, 8)).params - model_stats(off, (1, 8, 8)).params == 5 * 16


def test_macs_from_shapes():
    # depth 3 on 8x8: pools after layers 0 and 1 (8 -> 4 -> 2)
    assert pool_positions(3, 8) == [0, 1]
    m = build_model(run_of(depth=3, width=4, fc_layers=1, fc_width=6), (1, 8, 8), 10)
    expect = 8 * 8 * 4 * 1 * 9 + 4 * 4 * 4 * 4 * 9 + 2 * 2 * 4 * 4 * 9 + 4 * 6 + 6 * 10
    assert model_stats(m, (1, 8, 8)).macs == expect


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 3, 3)])
def test_every_depth_is_valid_on_every_input_size(shape):
    x = torch.randn(2, *shape)
    for depth in range(1, 25):
        for residual in (False, True):
            m = build_model(run_of(depth=depth, width=4, residual=residual), shape, 7)
            out = m(x)
            assert out.shape == (2, 7)
            assert torch.isfinite(out).all()
            pools = pool_positions(depth, min(shape[1:]))
            assert len(pools) <= depth - 1 and all(p < depth - 1 for p in pools)
            assert min(shape[1:]) // 2 ** len(pools) >= min(2, min(shape[1:]))


def shared_params_equal(a, b, weights_only=False):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    shared = sorted(n for n in set(pa) & set(pb) if not weights_only or n.endswith("weight"))
    assert shared
    return all(torch.equal(pa[n], pb[n]) for n in shared), shared


@pytest.mark.parametrize("init", ["kaiming", "xavier", "default"])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_bias_on_off_share_bit_identical_initial_values(init, norm):
    for seed in (0, 1, 12345):
        kw = dict(depth=6, width=8, norm=norm, init=init, seed=seed, fc_layers=1)
        a = build_model(run_of(bias=True, bias_init=0.1, **kw), (1, 8, 8), 10)
        b = build_model(run_of(bias=False, **kw), (1, 8, 8), 10)
        c = build_model(run_of(bias=True, bias_init=1.0, fc_bias_init=1.0, **kw), (1, 8, 8), 10)
        d = build_model(run_of(bias=True, bias_init=0.1, fc_bias=False, **kw), (1, 8, 8), 10)
        for other, weights_only in ((b, False), (c, True), (d, False)):
            equal, shared = shared_params_equal(a, other, weights_only)
            assert equal
            assert sum(n.endswith("conv.weight") for n in shared) == 6
        assert all(torch.all(u.conv.bias == 0.1) for u in a.units)
        assert torch.all(c.classifier.bias == 1.0)
    x = build_model(run_of(seed=0, depth=3), (1, 8, 8), 10)
    y = build_model(run_of(seed=1, depth=3), (1, 8, 8), 10)
    assert not torch.equal(x.units[0].conv.weight, y.units[0].conv.weight)


def test_init_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    build_model(run_of(depth=4), (1, 8, 8), 10)
    assert torch.equal(before, torch.rand(3))


def test_residual_depth_20_trains():
    torch.set_num_threads(1)
    data = load_tensors(DatasetSpec("digits"))
    run = run_of(depth=20, width=16, residual=True, norm="batch", epochs=4, lr=0.05)
    out = train_run(run, data)
    assert out.status == "completed" and out.epochs == 4
    losses = [h["train_loss"] for h in out.history]
    assert losses[-1] < 0.25 * losses[0]
    assert out.final["val_accuracy"] > 0.8  # 10 classes: chance is 0.1


# ------------------------------------------------------------------ kernel, stride, head

@pytest.mark.parametrize("size", [5, 7, 8, 27, 28])
@pytest.mark.parametrize("kernel, stride", [(1, 1), (3, 2), (5, 2), (5, 3), (7, 4), (11, 1)])
def test_same_padding_keeps_ceil_size_over_stride(size, kernel, stride):
    m = build_model(run_of(depth=2, width=3, kernel=kernel, stride=stride, pool="none"),
                    (1, size, size + 1), 10)
    sizes = []
    for u in m.units:
        u.register_forward_hook(lambda mod, i, o: sizes.append(tuple(o.shape[2:])))
    m(torch.randn(2, 1, size, size + 1))
    s1 = (-(-size // stride), -(-(size + 1) // stride))
    s2 = (-(-s1[0] // stride), -(-s1[1] // stride))
    assert sizes == [s1, s2]


def test_same_padding_matches_tensorflow_on_the_classic_net():
    """TensorFlow's SAME at 28 -> 14 with a 5x5 kernel pads 1 before and 2 after: with a
    kernel that only reads its top-left tap, output (0, 0) is input (-1, -1) = padding."""
    unit = build_model(run_of(depth=1, width=1, kernel=5, stride=2, pool="none", bias=False),
                       (1, 28, 28), 10).units[0]
    with torch.no_grad():
        unit.conv.weight.zero_()
        unit.conv.weight[0, 0, 0, 0] = 1.0  # reads input (2i - 1, 2j - 1)
    x = torch.arange(1.0, 28 * 28 + 1).view(1, 1, 28, 28)
    out = unit(x)[0, 0]
    assert out.shape == (14, 14) and out[0, 0] == 0 and out[1, 1] == x[0, 0, 1, 1]


def test_the_classic_net_has_its_published_shape():
    run = run_of(depth=2, width=16, kernel=5, stride=2, pool="none", flatten=True,
                 fc_layers=1, fc_width=64, norm="none")
    m = build_model(run, (1, 28, 28), 10)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {"units.0.conv.weight": (16, 1, 5, 5), "units.0.conv.bias": (16,),
                      "units.1.conv.weight": (16, 16, 5, 5), "units.1.conv.bias": (16,),
                      "head.0.weight": (64, 7 * 7 * 16), "head.0.bias": (64,),
                      "classifier.weight": (10, 64), "classifier.bias": (10,)}
    assert model_stats(m, (1, 28, 28)).macs == (14 * 14 * 16 * 25 + 7 * 7 * 16 * 16 * 25
                                                 + 784 * 64 + 64 * 10)


@pytest.mark.parametrize("stride", [2, 3, 4])
@pytest.mark.parametrize("pool", ["max", "avg", "none"])
def test_strides_with_pools_are_valid_at_every_depth(stride, pool):
    for shape in [(1, 8, 8), (3, 32, 32), (1, 3, 5)]:
        for depth in (1, 2, 5, 12):
            m = build_model(run_of(depth=depth, width=3, stride=stride, pool=pool,
                                   flatten=True, fc_layers=1, fc_width=5), shape, 4)
            assert m(torch.randn(2, *shape)).shape == (2, 4)


# ------------------------------------------------------------------ init

def test_trunc_normal_is_cut_at_two_std_and_seeded():
    for std in (0.1, 0.02):
        m = build_model(run_of(init="trunc_normal", init_std=std, depth=3, width=32,
                               fc_layers=1), (1, 8, 8), 10)
        w = torch.cat([p.flatten() for n, p in m.named_parameters() if n.endswith("weight")])
        assert w.abs().max() <= 2 * std
        assert abs(w.std().item() - 0.88 * std) < 0.05 * std  # a normal cut at 2 std
    a = build_model(run_of(init="trunc_normal", seed=4), (1, 8, 8), 10)
    b = build_model(run_of(init="trunc_normal", seed=4), (1, 8, 8), 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("bias_init, fc_bias_init, depth, fc_layers, conv, fc", [
    ([0, 1.0], 1.0, 2, 1, [0, 1], [1, 1]),  # the classic net
    ("0, 1...", "[1, 0]", 4, 1, [0, 1, 1, 1], [1, 0]),  # first 0, rest 1; AlexNet's FC
    ("0, 1, 0, 1, 1, 0...", 0.0, 7, 0, [0, 1, 0, 1, 1, 0, 0], [0]),  # AlexNet's conv rule
    ("0, 1, 0, 1, 1, 0...", "2...", 2, 2, [0, 1], [2, 2, 2]),
    (0.25, "0.5, 0...", 3, 2, [0.25] * 3, [0.5, 0, 0]),
])
def test_per_layer_bias_constants(bias_init, fc_bias_init, depth, fc_layers, conv, fc):
    run = run_of(bias_init=KNOBS["bias_init"].check(bias_init), depth=depth,
                 fc_bias_init=KNOBS["fc_bias_init"].check(fc_bias_init), fc_layers=fc_layers)
    m = build_model(run, (1, 8, 8), 10)
    linears = [*(x for x in m.head if isinstance(x, torch.nn.Linear)), m.classifier]
    assert [torch.unique(u.conv.bias).tolist() for u in m.units] == [[c] for c in conv]
    assert [torch.unique(x.bias).tolist() for x in linears] == [[c] for c in fc]


# ------------------------------------------------------------------ dropout

def test_dropout_masks_are_seeded_by_the_run_and_leave_the_global_rng_alone():
    x = torch.randn(8, 1, 8, 8)
    kw = dict(depth=2, width=8, conv_dropout=0.3, dropout=0.5, fc_layers=1)
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    outs = [build_model(run_of(seed=s, **kw), (1, 8, 8), 10)(x) for s in (1, 1, 2)]
    assert torch.equal(before, torch.rand(3))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    m = build_model(run_of(seed=1, **kw), (1, 8, 8), 10).eval()
    plain = build_model(run_of(seed=1, **kw | {"conv_dropout": 0.0, "dropout": 0.0}),
                        (1, 8, 8), 10).eval()
    assert torch.equal(m(x), plain(x))  # identity in eval mode, same weights


# ------------------------------------------------------------------ the registry

class TinyMLP(torch.nn.Module):
    def __init__(self, inputs: int, width: int, classes: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(inputs, width),
                                        torch.nn.ReLU(), torch.nn.Linear(width, classes))

    def forward(self, x):
        return self.body(x)


def build_mlp(run, input_shape, num_classes):
    torch.manual_seed(run["seed"])
    c, h, w = input_shape
    return TinyMLP(c * h * w, run["width"], num_classes)


@pytest.fixture
def mlp_family():
    from study.spec import Family, register_family, unregister_family

    register_family(Family("mlp", build_mlp, knobs=("width",), doc="a test family"))
    yield
    unregister_family("mlp")


def test_a_second_family_registers_without_touching_the_parser(mlp_family):
    from study.search.space import expand_runs
    from study.spec import SpecError, parse_spec
    from tests.conftest import tiny_spec

    def mlp_spec(**over):
        return tiny_spec(**{"model": {"name": "mlp", "width": 7}, "space": {"lr": {"log": [
            0.01, 0.1]}}, "compare": {"momentum": [0.0, 0.9]}} | over)

    spec = parse_spec(mlp_spec())
    (run, *_) = expand_runs(spec, 0, {"lr": 0.05})
    assert spec.model == "mlp" and run["model"] == "mlp"
    data = load_tensors(spec.dataset)
    model = build_model(run, data.input_shape, data.num_classes)
    assert isinstance(model, TinyMLP) and model.body[1].out_features == 7
    out = train_run(run, data)
    assert out.status == "completed" and out.epochs == 2
    assert out.macs == 64 * 7 + 7 * 10 and out.params == 64 * 7 + 7 + 7 * 10 + 10
    with pytest.raises(SpecError, match=r"field `model.depth`: unknown key"):
        parse_spec(mlp_spec(model={"name": "mlp", "depth": 3}))
    with pytest.raises(SpecError, match=r"field `space.depth`: unknown key"):
        parse_spec(mlp_spec(space={"depth": {"int": [1, 3]}}))
    with pytest.raises(SpecError, match=r"field `compare.bias`: unknown key"):
        parse_spec(mlp_spec(compare={"bias": [True, False]}))
    with pytest.raises(SpecError, match=r"one of 'cnn', 'mlp'"):
        parse_spec(mlp_spec(model="vgg"))


def test_registering_a_taken_name_or_an_unknown_knob_fails(mlp_family):
    from study.spec import Family, register_family

    with pytest.raises(ValueError, match="already registered"):
        register_family(Family("mlp", build_mlp, knobs=()))
    with pytest.raises(ValueError, match="not model knobs"):
        register_family(Family("other", build_mlp, knobs=("lr", "nope")))
