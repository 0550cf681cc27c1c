"""Hostile specs: YAML bombs, huge numbers, bad files and paths, control characters.

Each class of bad input is a parametrized test: every instance must end in a SpecError that
names the file and the field (or the file's problem) and says what is allowed; no hang, no
traceback, nothing a terminal would obey.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml

from study.spec import SpecError, load_spec, parse_spec
from study.spec import yaml_reader as spec_yaml
from study.terminal import printable
from tests.conftest import ROOT, SPECS, tiny_spec

BASE = yaml.safe_dump(tiny_spec(), sort_keys=False)
# learning rate fixed in `train`, not searched
FIXED_LR = yaml.safe_dump(tiny_spec(space={"depth": {"int": [1, 3]}}), sort_keys=False)


def spec_file(tmp_path: Path, text: str | bytes, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def refused(path: Path | str, overrides: dict | None = None) -> str:
    with pytest.raises(SpecError) as ei:
        load_spec(path, overrides=overrides)
    msg = str(ei.value)
    assert msg.startswith(os.fsdecode(path)), msg
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------ YAML anchors and aliases

def _laughs(levels: int, fan: int) -> str:
    lines = ['l0: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]")
    return "\n".join(lines) + "\n"


BOMBS = {
    # 9 levels of 9 aliases: 9^9 (~3.9e8) strings once expanded, from ~400 bytes
    "billion-laughs": _laughs(9, 9),
    # the same, nested under a spec field, after a valid start
    # the same after a valid spec, 6^12 (~2.2e9) strings
    "after-a-valid-spec": BASE + _laughs(12, 6),
    "merge-key": "defaults: &d {epochs: 2}\n" + BASE.replace("train:\n", "train:\n  <<: *d\n"),
    "alias-as-value": BASE + "question2: &q hello\nnote: *q\n",
    "anchor-only": BASE.replace("repeats: 1", "repeats: &r 1"),
    "alias-in-flow-list": "name: &n tiny\nquestion: [*n, *n, *n]\n",
    "self-reference": "a: &a [*a]\n",
}


@pytest.mark.parametrize("text", BOMBS.values(), ids=BOMBS.keys())
def test_yaml_anchors_and_aliases_refused_fast_and_small(tmp_path, text):
    p = spec_file(tmp_path, text)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        msg = refused(p)
        took = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "YAML anchor or alias" in msg and "Allowed: plain values only" in msg
    assert "line " in msg
    assert took < 0.5, took
    assert peak < 50e6, peak


def test_billion_laughs_in_an_override_is_never_expanded(tmp_path):
    # --set values are read as YAML too: an alias there stays text and is refused as text
    p = spec_file(tmp_path, BASE)
    msg = refused(p, {"search.trials": "&a [*a, *a]"})
    assert "`search.trials`" in msg and "expected an integer" in msg


@pytest.mark.parametrize("text, what", [
    ("a: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than 16 levels"),
    ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 30)) + "  " * 30 + "v: 1\n",
     "nested deeper than 16 levels"),
    ("name: tiny\n" + "#" * (spec_yaml.MAX_BYTES + 10) + "\n", "at most 1048576 bytes"),
    ("repeats: " + "9" * 5000 + "\n", "not a usable value"),
    ("name: [unclosed\n", "not valid YAML at line 2"),
    ("name: \x1b[2J\n", "not valid YAML"),
    ("repeats: !!timestamp 3\n", "YAML tag `tag:yaml.org,2002:timestamp`"),
    ("question: !!binary aGVsbG8=\n", "YAML tag"),
    ("name: !!python/object:os.system x\n", "YAML tag"),
    ("search: !!set {a, b}\n", "YAML tag"),
])
def test_oversized_deep_or_broken_yaml_refused(tmp_path, text, what):
    msg = refused(spec_file(tmp_path, text))
    assert what in msg, msg


# ------------------------------------------------------------------ numbers out of bounds

HUGE = 10**9


@pytest.mark.parametrize("over, field, allowed", [
    ({"model": {"name": "cnn", "depth": HUGE}}, "model.depth", "an integer from 1 to 2048"),
    ({"model": {"name": "cnn", "width": HUGE}}, "model.width", "an integer from 1 to 4096"),
    ({"model": {"name": "cnn", "fc_layers": 65}}, "model.fc_layers", "from 0 to 64"),
    ({"model": {"name": "cnn", "bias_init": 1e9}}, "model.bias_init", "from -100 to 100"),
    ({"train": {"epochs": HUGE}}, "train.epochs", "an integer from 1 to 10000"),
    ({"train": {"batch_size": HUGE}}, "train.batch_size", "an integer from 1 to 65536"),
    ({"train": {"weight_decay": 5.0}}, "train.weight_decay", "a number from 0 to 1"),
    ({"train": {"lr": 10**400}}, "train.lr", "a number from 0 to 10"),
    ({"space": {"depth": {"int": [1, HUGE]}}}, "space.depth.int[1]", "from 1 to 2048"),
    ({"space": {"lr": {"log": [1e-5, 1e9]}}}, "space.lr.log[1]", "a number from 0 to 10"),
    ({"space": {"depth": {"int": [1, 3], "step": HUGE}}}, "space.depth.step", "<= 2048"),
    ({"repeats": HUGE}, "repeats", "an integer from 1 to 1000"),
    ({"repeats": 10**5000}, "repeats", "an integer from 1 to 1000"),
    ({"search": {"trials": HUGE}}, "search.trials", "an integer from 1 to 10000"),
    ({"search": {"seed": 2**40}}, "search.seed", "from 0 to 2147483647"),
    ({"search": {"pending": HUGE}}, "search.pending", "an integer from 1 to 1024"),
    ({"search": {"scheduler": "asha", "grace_period": HUGE}}, "search.grace_period",
     "from 1 to 10000"),
    ({"execution": {"concurrency": HUGE}}, "execution.concurrency", "from 1 to 1024"),
    ({"execution": {"retries": HUGE}}, "execution.retries", "an integer from 0 to 100"),
    ({"execution": {"checkpoint_every": HUGE}}, "execution.checkpoint_every",
     "auto or an integer from 0 to 10000"),
    ({"dataset": {"name": "synthetic", "samples": HUGE}}, "dataset.samples",
     "from 20 to 1000000"),
    ({"dataset": {"name": "synthetic", "limit": 10**12}}, "dataset.limit",
     "from 10 to 100000000"),
    ({"verdict": {"equivalence_margin": 1e9}}, "verdict.equivalence_margin", "<= 100"),
    ({"verdict": {"alpha": 0.9}}, "verdict.alpha", "> 0 and <= 0.5"),
    ({"resources": {"cpu": 1e9}}, "resources.cpu", "> 0 and <= 1024"),
    ({"resources": {"gpu": 1000}}, "resources.gpu", ">= 0 and <= 64"),
    ({"compare": {"bias_init": [i / 100 for i in range(65)]}}, "compare.bias_init",
     "a list of 2 to 64 distinct levels"),
    ({"space": {"bias_init": {"choice": [i / 1e4 for i in range(1001)]}}},
     "space.bias_init.choice", "at most 1000 values"),
    ({"repeats": 1000, "search": {"trials": 100}}, "search.trials",
     "trials x levels x repeats at most 100000"),
])
def test_numbers_out_of_bounds_name_the_bound(tmp_path, over, field, allowed):
    with pytest.raises(SpecError) as ei:
        parse_spec(tiny_spec(**over), source="s.yaml")
    msg = str(ei.value)
    assert f"field `{field}`" in msg and "Allowed: " in msg and allowed in msg, msg
    assert len(msg) < 600


# ------------------------------------------------------------------ models that cannot fit

@pytest.mark.parametrize("model", [
    # a flattened 256x256 map into a 4096-unit layer: 5.5e10 weights in the head
    {"name": "cnn", "width": 64, "pool": "none", "flatten": True, "fc_layers": 1,
     "fc_width": 4096},
    # 11x11 kernels at width 4096: 2e9 weights per layer
    {"name": "cnn", "width": 4096, "kernel": 11},
])
def test_new_model_knobs_count_in_the_size_check(model):
    raw = tiny_spec(model=model, dataset={"name": "synthetic", "samples": 100,
                                          "image_size": 256})
    msg = str(pytest.raises(SpecError, parse_spec, raw).value)
    assert "model too large" in msg and "Allowed: at most 5e+07 parameters" in msg, msg
    assert f"kernel {model.get('kernel', 3)} (" in msg


def test_model_too_large_refused_with_numbers():
    raw = tiny_spec(model={"name": "cnn", "width": 4096},
                    space={"depth": {"int": [1, 64]}})
    msg = str(pytest.raises(SpecError, parse_spec, raw).value)
    assert "model too large: up to 9.5e+09 parameters at depth 64 (space.depth), width " \
        "4096 (model.width)" in msg, msg
    assert "Allowed: at most 5e+07 parameters" in msg


@pytest.mark.parametrize("over, where", [
    # 256x256 synthetic images, width 256, batch 512
    ({"dataset": {"name": "synthetic", "samples": 100, "image_size": 256},
      "model": {"name": "cnn", "width": 256}, "train": {"batch_size": 512}},
     "256x256 inputs"),
    # a conditional knob takes its default (batch_size 64) when its condition fails: that
    # counts too (8.8 GiB here; 2.2 GiB at the largest value searched, 16)
    ({"dataset": {"name": "synthetic", "samples": 100, "image_size": 128},
      "model": {"name": "cnn", "width": 512, "norm": "batch"}, "train": {"epochs": 1},
      "space": {"depth": {"int": [1, 8]},
                "batch_size": {"choice": [8, 16], "when": {"depth": [8]}}}},
     "batch_size 64 (space.batch_size)"),
])
def test_activations_too_large_refused(over, where):
    msg = str(pytest.raises(SpecError, parse_spec, tiny_spec(**over)).value)
    assert "activations too large" in msg and where in msg, msg
    assert "Allowed: at most 8 GiB per run" in msg


@pytest.mark.parametrize("kind", ["npz", "idx"])
def test_file_dataset_input_size_read_from_header(tmp_path, kind):
    from study.data.formats import write_idx

    x = np.zeros((4, 512, 512), np.uint8)
    y = np.zeros(4, np.int64)
    if kind == "npz":
        path = tmp_path / "big.npz"
        np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    else:
        path = tmp_path
        for stem, arr in [("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                          ("t10k-images-idx3-ubyte", x), ("t10k-labels-idx1-ubyte", y)]:
            write_idx(path / (stem + ".gz"), arr)
    raw = tiny_spec(dataset=f"{kind}:{path}", model={"name": "cnn", "width": 128},
                    train={"batch_size": 1024})
    msg = str(pytest.raises(SpecError, parse_spec, raw).value)
    assert "activations too large" in msg and "512x512 inputs" in msg, msg
    assert parse_spec(raw, check_paths=False).fixed["batch_size"] == 1024  # not read


# ------------------------------------------------------------------ files and paths

def _fifo(tmp_path: Path) -> Path:
    p = tmp_path / "pipe.yaml"
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("make, what", [
    (lambda d: spec_file(d, "name: caf\xe9\n".encode("latin-1")), "not UTF-8 text: byte 0xe9"),
    (lambda d: spec_file(d, BASE.encode("utf-16")), "not UTF-8 text"),
    (lambda d: spec_file(d, b"\x89PNG\r\n\x1a\n\x00\x00"), "not UTF-8 text"),
    (lambda d: d, "is a folder"),
    (lambda d: d / "missing.yaml", "no such spec file"),
    (lambda d: str(d / ("x" * 5000 + ".yaml")), "File name too long"),
    (lambda d: str(d / "a\0b.yaml"), "NUL"),
    (lambda d: spec_file(d, "x: 1\n") / "below.yaml", "no such spec file"),
    (_fifo, "not a regular file"),
])
def test_unusable_files_and_paths(tmp_path, make, what):
    msg = refused(make(tmp_path))
    assert what in msg, msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    p = spec_file(tmp_path, BASE)
    p.chmod(0)
    assert "Permission denied" in refused(p)


def test_utf8_with_bom_is_fine(tmp_path):
    assert load_spec(spec_file(tmp_path, b"\xef\xbb\xbf" + BASE.encode())).name == "tiny"


# ------------------------------------------------------------------ control characters

@pytest.mark.parametrize("name", ["tiny\n", "tiny ", " tiny", "ti\x1b[2Jny", "tiny\r",
                                  "\ttiny", "tiny\x00", "tiny\u202e", "tiny\x9b"])
def test_names_with_control_characters_or_trailing_space_refused(name):
    msg = str(pytest.raises(SpecError, parse_spec, tiny_spec(name=name)).value)
    assert "field `name`" in msg and repr(name) in msg


@pytest.mark.parametrize("field, value", [
    ("question", "Does it matter?\x1b[2J"),
    ("question", "Does it matter?\rHacked"),
    ("question", "Bell\x07"),
    ("question", "C1 CSI \x9b31m"),
    ("question", "reversed \u202eText"),
    ("question", "x" * 2001),
    ("dataset", {"name": "npz", "path": "/tmp/a\n.npz"}),
    ("storage", {"results": "out\x1b]0;title\x07"}),
])
def test_free_text_and_paths_with_control_characters_refused(field, value):
    msg = str(pytest.raises(SpecError, parse_spec, tiny_spec(**{field: value})).value)
    assert f"field `{field}" in msg and "\x1b" not in msg and "\r" not in msg


@pytest.mark.parametrize("field, value", [
    ("verdict", {"by": [[1, 2]]}), ("verdict", {"by": {"a": 1}}), ("train", {"lr": [0.1]}),
    ("space", {"depth": {"int": [1, 3], "when": {"bias": [[True]]}}}),
    ("search", {"seed": float("nan")}), ("resources", {"cpu": float("inf")}),
])
def test_values_of_the_wrong_shape_are_spec_errors(field, value):
    msg = str(pytest.raises(SpecError, parse_spec, tiny_spec(**{field: value})).value)
    assert f"field `{field}" in msg and "Allowed: " in msg


def test_question_keeps_newlines_and_tabs():
    s = parse_spec(tiny_spec(question="Line one\n\tline two\n"))
    assert s.question == "Line one\n\tline two"


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2J", "\\x1b[2J"), ("a\rb", "a\\rb"), ("\x07", "\\x07"), ("\x9b", "\\x9b"),
    ("\u202e", "\\u202e"), ("\udcff", "\\udcff"), ("\x7f", "\\x7f"), ("a\n\tb", "a\n\tb"),
])
def test_printable_escapes_what_a_terminal_obeys(raw, shown):
    assert printable(raw) == shown


def test_summary_shows_user_text_escaped():
    s = parse_spec(tiny_spec(), source="evil\x1b[2J\r.yaml")
    out = s.summary()
    assert "evil\\x1b[2J\\r.yaml" in out and "\x1b" not in out and "\r" not in out


# ------------------------------------------------------------------ float spellings

@pytest.mark.parametrize("spelled, value", [
    ("1e-3", 1e-3), ("1E-3", 1e-3), ("5e-2", 0.05), ("1.0e-2", 0.01), (".5", 0.5),
    ("2.5E+0", 2.5), ("1_0e-1", 1.0),
])
def test_float_spellings_are_numbers_in_files_and_overrides(tmp_path, spelled, value):
    p = spec_file(tmp_path, FIXED_LR.replace("train:\n", f"train:\n  lr: {spelled}\n"))
    assert load_spec(p).fixed["lr"] == pytest.approx(value)
    over = load_spec(spec_file(tmp_path, FIXED_LR, "o.yaml"), {"train.lr": spelled})
    assert over.fixed["lr"] == pytest.approx(value)


@pytest.mark.parametrize("field, spelled, value", [
    ("train.epochs", "5e+2", 500), ("model.bias_init", "-.5", -0.5),
    ("verdict.equivalence_margin", "5E-3", 0.005), ("verdict.alpha", "1e-2", 0.01),
])
def test_float_spellings_in_other_fields(field, spelled, value):
    s = parse_spec(tiny_spec(), overrides={field: spelled})
    got = {"train.epochs": lambda: s.fixed["epochs"],
           "model.bias_init": lambda: s.fixed["bias_init"],
           "verdict.equivalence_margin": lambda: s.margin, "verdict.alpha": lambda: s.alpha}
    assert got[field]() == pytest.approx(value)


@pytest.mark.parametrize("bad", ["fast", "1e", "1e-3x", "e-3", "1..5", "0x1p-3"])
def test_strings_that_are_not_numbers_still_refused(bad):
    msg = str(pytest.raises(SpecError, parse_spec, tiny_spec(space={"depth": {"int": [1, 3]}}),
                            overrides={"train.lr": bad}).value)
    assert "field `train.lr`" in msg and repr(bad) in msg and "a number from 0 to 10" in msg


# ------------------------------------------------------------------ the command line

def _cli(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "study.cli", "validate", *args],
                          capture_output=True, env=env, timeout=60)


@pytest.mark.parametrize("make", [
    lambda d: spec_file(d, _laughs(9, 9)),
    lambda d: spec_file(d, b"name: caf\xe9\n"),
    lambda d: spec_file(d, BASE.replace("samples: 200", "samples: 200000000"),
                        "evil\x1b[2J\x07\r.yaml"),
    lambda d: spec_file(d, BASE.replace("name: tiny", 'name: "tiny\\n"')),
    lambda d: spec_file(d, BASE.replace("Does the", '"\\e[31mDoes the').replace(
        "problem?", 'problem?"')),
    lambda d: d,
    lambda d: os.fsencode(d) + b"/\xff\x1b[31m" + b"x" * 300,
])
def test_cli_refuses_with_one_clean_error_line(tmp_path, make):
    path = make(tmp_path)
    r = _cli(path if isinstance(path, bytes) else os.fsencode(path))
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not any(ch in r.stderr for ch in (b"\x1b", b"\x07", b"\r", b"\xff")), r.stderr


def test_cli_accepts_float_spellings_and_prints_odd_names_escaped(tmp_path):
    p = spec_file(tmp_path, FIXED_LR, "odd\x1b]0;x\x07.yaml")
    r = _cli(os.fsencode(p), os.fsencode(tmp_path) + b"/\xff.yaml", "--set", "train.lr=1e-3")
    assert r.returncode == 2  # the second file does not exist ...
    out = r.stdout.decode()
    assert "lr=0.001" in out and "odd\\x1b]0;x\\x07.yaml" in out  # ... the first passed
    assert b"\x1b" not in r.stdout and b"\x1b" not in r.stderr
    assert "\\udcff.yaml: no such spec file" in r.stderr.decode()


def test_bundled_specs_still_validate():
    r = _cli(*sorted(str(p) for p in SPECS.glob("*.yaml")))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().count("OK: ") == len(list(SPECS.glob("*.yaml")))


# ------------------------------------------------------------------ the model knobs of issue 20

def _cnn(**knobs) -> dict:
    return {"name": "cnn", "width": 4, **knobs}


LR = {"lr": {"log": [0.01, 0.1]}}  # a space without depth


@pytest.mark.parametrize("over, field, allowed", [
    *[({"model": _cnn(kernel=v)}, "model.kernel", "an odd integer from 1 to 11")
      for v in (0, 2, 4, 13, 3.5, "3", True, -1)],
    *[({"model": _cnn(stride=v)}, "model.stride", "an integer from 1 to 4")
      for v in (0, 5, 1.5, "2", None)],
    *[({"model": _cnn(**{k: v})}, f"model.{k}", "a number >= 0 and < 1")
      for k in ("dropout", "conv_dropout") for v in (-0.1, 1.0, 2, "half", float("nan"))],
    *[({"model": _cnn(init_std=v)}, "model.init_std", "a number from 0.0001 to 10")
      for v in (0, -1, 11, float("inf"), "0.1x")],
    *[({"model": _cnn(init=v)}, "model.init", "'trunc_normal'")
      for v in ("truncated_normal", "normal", 0.1)],
    *[({"model": _cnn(pool=v)}, "model.pool", "'none'") for v in ("stride", False)],
    *[({"model": _cnn(**{k: v})}, f"model.{k}", "a rule such as '0, 1...'")
      for k in ("bias_init", "fc_bias_init")
      for v in ("0, x", "1..., 0", "", ",", "0,,1", [], [0, "a"], [0, [1]], "nan", "inf...",
                "1e999", [True], {"conv1": 0}, "0; 1", [101], "x" * 2000, "[0, 1...]",
                "[]", "[0", "0, 1]")],
    *[({"train": {"steps": v}}, "train.steps", "an integer from 0 to 10000000")
      for v in (-1, 1.5, 10**8, "1001")],
    ({"space": {"kernel": {"int": [1, 7]}}}, "space.kernel", "odd values only"),
    ({"space": {"kernel": {"int": [1, 7], "step": 1}}}, "space.kernel", "odd values only"),
    ({"space": {"kernel": {"int": [2, 6], "step": 2}}}, "space.kernel.int[0]",
     "an odd integer"),
    ({"space": {"bias_init": {"float": [0, "0, 1..."]}}}, "space.bias_init.float[1]",
     "a number"),
])
def test_bad_model_knob_values_refused(over, field, allowed):
    with pytest.raises(SpecError) as ei:
        parse_spec(tiny_spec(**over), source="s.yaml")
    msg = str(ei.value)
    assert msg.startswith("s.yaml: ") and f"field `{field}`" in msg, msg
    assert "Allowed: " in msg and allowed in msg, msg
    assert len(msg) < 700


@pytest.mark.parametrize("over, field, allowed", [
    # one constant per layer, for every depth the study can build
    ({"model": _cnn(depth=2, bias_init=[0, 1, 1]), "space": LR}, "model.bias_init",
     "one constant per conv layer: 2 here (depth at model.depth)"),
    ({"model": _cnn(bias_init=[0, 1])}, "model.bias_init",
     "1 or 2 or 3 here (depth at space.depth)"),
    ({"model": _cnn(depth=2), "space": LR, "compare": {"bias_init": [0.0, "0, 1, 0"]}},
     "compare.bias_init", "one constant per conv layer: 2 here"),
    ({"model": _cnn(fc_layers=1, fc_bias_init=[1, 0, 0])}, "model.fc_bias_init",
     "one constant per fully connected layer"),
    # steps and epochs are two answers to one question
    ({"train": {"epochs": 2, "steps": 100}}, "train.steps", "either `epochs` (train.epochs)"),
    ({"train": {"steps": 100}, "space": {"epochs": {"int": [1, 3]}}}, "train.steps",
     "not both"),
    ({"train": {"steps": 100}, "search": {"scheduler": "asha", "trials": 2}},
     "search.scheduler", "fifo when training by `steps`"),
    # identity shortcuts need the map size unchanged
    ({"model": _cnn(residual=True, stride=2)}, "model.stride", "stride 1 when `residual`"),
    ({"model": _cnn(stride=2), "compare": {"residual": [True, False]}}, "model.stride",
     "compare.residual"),
    # dropout masks come from each run's generator: not fusable
    ({"model": _cnn(dropout=0.5), "train": {"epochs": 2, "fuse": "on"}}, "train.fuse",
     "auto or off with dropout > 0 (model.dropout)"),
    ({"space": {"conv_dropout": {"float": [0, 0.3]}}, "train": {"epochs": 1, "fuse": True}},
     "train.fuse", "conv_dropout > 0 (space.conv_dropout)"),
])
def test_conflicting_model_and_train_knobs_refused(over, field, allowed):
    raw = tiny_spec(**over)
    if "train" in over:
        raw["train"] = {"batch_size": 32, **over["train"]}
    with pytest.raises(SpecError) as ei:
        parse_spec(raw, source="s.yaml")
    msg = str(ei.value)
    assert msg.startswith("s.yaml: ") and f"field `{field}`" in msg, msg
    assert "Allowed: " in msg and allowed in msg, msg


@pytest.mark.parametrize("model, name", [
    ("resnet50", "'resnet50'"), ({"name": "mlp"}, "'mlp'"), ({"name": 3}, "3"),
    ({"name": ""}, "''"),
])
def test_unknown_model_family_refused_with_the_known_ones(model, name):
    with pytest.raises(SpecError) as ei:
        parse_spec(tiny_spec(model=model), source="s.yaml")
    msg = str(ei.value)
    assert "field `model.name`" in msg and name in msg and "Allowed: one of 'cnn'" in msg, msg


@pytest.mark.parametrize("value, canonical", [
    (0.5, 0.5), (1, 1.0), ("0.25", 0.25), ([0, 1.0], "[0,1]"), ("0, 1", "[0,1]"),
    ("[0, 1]", "[0,1]"), ("0, 1...", "0,1..."), (" 0 ,1, 0 , 1,1, 0 ... ", "0,1,0,1,1,0..."),
    ("1e-2...", "0.01..."), ([-0.5], "[-0.5]"), ("[2.5]", "[2.5]"),
])
def test_per_layer_constants_are_kept_in_one_canonical_form(value, canonical):
    depth = 1 if canonical in ("[-0.5]", "[2.5]") else 2
    spec = parse_spec(tiny_spec(model=_cnn(bias_init=value),
                                space={"depth": {"int": [depth, depth]}}))
    got = spec.fixed["bias_init"]
    assert got == canonical and type(got) is type(canonical)


@pytest.mark.parametrize("level", ["0,1,0,1,1,0...", "[0,1]", "[" + ",".join(["0.5"] * 64) + "]",
                                   "a\\nb", "x" * 300, "a/b", "a b", "c:d"])
def test_compared_levels_become_mlflow_safe_key_parts(level):
    """A per-layer rule compared as a level names a parent-run tag: MLflow refuses keys with
    commas or brackets, and keys over 250 characters."""
    from study.tracking.answer import key_part

    part = key_part(level)
    assert len(part) <= 100 and all(ch.isalnum() or ch in "_-." for ch in part)
    assert part != key_part(level + "0")  # distinct levels, distinct keys
    assert key_part("0.01") == "0.01" and key_part(False) == "False"  # as before
