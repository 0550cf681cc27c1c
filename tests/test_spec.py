"""Spec validation: every class of user error gets a clear message, before anything runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from study.spec import KNOBS, SpecError, load_spec, parse_spec, resolve_storage
from tests.conftest import SPECS, tiny_spec


def write(tmp_path: Path, raw: object, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return p


def error_of(tmp_path: Path, raw: object) -> str:
    p = write(tmp_path, raw)
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)), msg  # always names the file
    assert "\n" not in msg.strip() or len(msg.splitlines()) <= 3, msg  # one paragraph
    return msg


def test_bundled_specs_are_valid():
    paths = sorted(SPECS.glob("*.yaml"))
    assert paths
    for p in paths:
        s = load_spec(p)
        assert s.total_runs == s.trials * len(s.levels) * s.repeats


def test_defaults_fill_every_knob():
    s = parse_spec(tiny_spec())
    assert set(s.fixed) | set(s.space) | {s.compare_knob} == set(KNOBS)
    assert s.fixed["width"] == 4 and s.fixed["epochs"] == 2
    assert s.seeds == (3,) and s.levels == (True, False) and s.total_runs == 4


def test_unknown_top_level_key(tmp_path):
    msg = error_of(tmp_path, tiny_spec(trails=3))
    assert "field `trails`" in msg and "unknown key" in msg and "search" in msg


def test_unknown_nested_key_lists_allowed(tmp_path):
    msg = error_of(tmp_path, tiny_spec(train={"epochs": 2, "lrate": 0.1}))
    assert "`train.lrate`" in msg and "unknown key" in msg and "lr" in msg


def test_wrong_type(tmp_path):
    msg = error_of(tmp_path, tiny_spec(repeats="three"))
    assert "`repeats`" in msg and "'three'" in msg and "integer" in msg
    msg = error_of(tmp_path, tiny_spec(train={"lr": "fast"}))
    assert "`train.lr`" in msg and "'fast'" in msg and "number" in msg
    msg = error_of(tmp_path, tiny_spec(model={"name": "cnn", "bias": "yes"}))
    assert "`model.bias`" in msg and "true or false" in msg


def test_empty_choices(tmp_path):
    msg = error_of(tmp_path, tiny_spec(space={"fc_width": {"choice": []}}))
    assert "`space.fc_width.choice`" in msg and "[]" in msg and "non-empty list" in msg


def test_low_greater_than_high(tmp_path):
    msg = error_of(tmp_path, tiny_spec(space={"depth": {"int": [8, 2]}}))
    assert "`space.depth.int`" in msg and "[8, 2]" in msg and "low <= high" in msg
    msg = error_of(tmp_path, tiny_spec(space={"lr": {"log": [0.1, 0.001]}}))
    assert "`space.lr.log`" in msg and "low > high" in msg


def test_unknown_dataset(tmp_path):
    msg = error_of(tmp_path, tiny_spec(dataset="imagenet"))
    assert "`dataset.name`" in msg and "'imagenet'" in msg and "digits" in msg \
        and "cifar10" in msg


def test_unknown_model(tmp_path):
    msg = error_of(tmp_path, tiny_spec(model="resnet50"))
    assert "`model.name`" in msg and "'resnet50'" in msg and "'cnn'" in msg


@pytest.mark.parametrize("raw_over, field", [
    ({"model": {"name": "cnn", "depth": 0}}, "model.depth"),
    ({"model": {"name": "cnn", "width": -3}}, "model.width"),
    ({"space": {"depth": {"int": [0, 4]}}}, "space.depth.int[0]"),
    ({"space": {"width": {"choice": [8, 0]}}, "model": "cnn"}, "space.width.choice[1]"),
])
def test_depth_or_width_below_one(tmp_path, raw_over, field):
    msg = error_of(tmp_path, tiny_spec(**raw_over))
    assert f"`{field}`" in msg and "an integer from 1 to" in msg


def test_compare_and_space_conflicts(tmp_path):
    msg = error_of(tmp_path, tiny_spec(space={"width": {"choice": [8, 16]}}))
    assert "`model.width`" in msg and "set twice" in msg and ": 4." in msg
    msg = error_of(tmp_path, tiny_spec(model={"name": "cnn", "bias": False}))
    assert "set twice" in msg and "compare.bias" in msg
    msg = error_of(tmp_path, tiny_spec(compare={"bias": [True]}))
    assert "a list of 2 to 64 distinct levels" in msg
    msg = error_of(tmp_path, tiny_spec(compare={"bias": [True, False], "norm": ["batch"]}))
    assert "exactly one knob" in msg


def test_condition_must_name_a_searched_or_compared_knob(tmp_path):
    msg = error_of(tmp_path, tiny_spec(space={"bias_init": {"choice": [0.0, 1.0],
                                                            "when": {"residual": True}}}))
    assert "`space.bias_init.when.residual`" in msg
    ok = parse_spec(tiny_spec(space={"bias_init": {"choice": [0.0, 1.0],
                                                   "when": {"bias": True}}}))
    assert ok.space["bias_init"].when == {"bias": (True,)}


def test_range_kind_must_fit_knob(tmp_path):
    msg = error_of(tmp_path, tiny_spec(space={"pool": {"int": [0, 1]}}))
    assert "`space.pool`" in msg and "choice" in msg
    msg = error_of(tmp_path, tiny_spec(space={"depth": {"float": [1, 3]}}))
    assert "integer" in msg


def test_dataset_paths_checked(tmp_path):
    msg = error_of(tmp_path, tiny_spec(dataset="npz:/nonexistent/x.npz"))
    assert "`dataset.path`" in msg and "x_train" in msg
    msg = error_of(tmp_path, tiny_spec(dataset=f"cifar10:{tmp_path}"))
    assert "cifar-10-python.tar.gz" in msg and "data_batch_1" in msg
    msg = error_of(tmp_path, tiny_spec(dataset="cifar10"))
    assert "missing path" in msg and "cifar-10-batches-py" in msg
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 8, 8)))
    msg = error_of(tmp_path, tiny_spec(dataset=f"npz:{bad}"))
    assert "missing: y_train, x_test, y_test" in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="no such spec file") as e:
        load_spec(tmp_path / "nope.yaml")
    assert str(SPECS / "conv_bias_bn.yaml") in str(e.value)  # the bundled specs, listed
    p = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(p)
    msg = error_of(tmp_path, ["a", "list"])
    assert "expected a mapping" in msg


def test_overrides(tmp_path):
    p = write(tmp_path, tiny_spec())
    s = load_spec(p, overrides={"search.trials": "5", "train.epochs": 1, "model.fc_width": "7",
                                "dataset.samples": "100"})
    assert s.trials == 5 and s.fixed["epochs"] == 1 and s.dataset.samples == 100
    assert s.fixed["fc_width"] == 7
    with pytest.raises(SpecError, match="`search.trails`"):
        load_spec(p, overrides={"search.trails": 2})
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=np.zeros((4, 3, 3)), y_train=np.zeros(4, dtype=int),
             x_test=np.zeros((2, 3, 3)), y_test=np.zeros(2, dtype=int))
    p2 = write(tmp_path, tiny_spec(dataset=f"npz:{npz}"), "s2.yaml")
    s2 = load_spec(p2, overrides={"dataset.val_fraction": "0.25"})
    assert s2.dataset.name == "npz" and s2.dataset.path == str(npz)
    assert s2.dataset.val_fraction == 0.25
    with pytest.raises(SpecError, match="not a mapping"):
        load_spec(p, overrides={"repeats.x": 2})


def test_gpu_field_validated(tmp_path):
    msg = error_of(tmp_path, tiny_spec(resources={"cpu": 1, "gpu": 1.5}))
    assert "`resources.gpu`" in msg and "fraction" in msg


def test_cli_validate_reports_error_without_traceback(tmp_path):
    p = write(tmp_path, tiny_spec(space={"fc_width": {"choice": []}}))
    r = subprocess.run([sys.executable, "-m", "study.cli", "validate", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "space.fc_width.choice" in r.stderr and str(p) in r.stderr
    ok = subprocess.run([sys.executable, "-m", "study.cli", "validate",
                         str(SPECS / "conv_bias_bn.yaml"), "--set", "search.trials=3"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "3 configs x 2 levels" in ok.stdout


def test_import_is_light():
    code = ("import study, sys; heavy = [m for m in ('ray', 'torch', 'optuna', 'mlflow', "
            "'sklearn') if m in sys.modules]; print(','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ""


def test_readme_documents_every_knob_and_dataset():
    from study.spec import DATASETS
    readme = (SPECS.parent / "README.md").read_text()
    for k in KNOBS.values():
        row = f"| `{k.name}` | {k.section} |"
        assert row in readme, f"README knob table lacks {k.name}"
    for d in DATASETS:
        assert f"`{d}" in readme, f"README lacks dataset {d}"


def test_store_urls_from_environment_and_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("STUDY_OPTUNA_STORAGE", "sqlite:///o.db")
    s = parse_spec(tiny_spec())
    assert s.tracking_uri == "http://127.0.0.1:5999"
    assert s.optuna_storage == f"sqlite:///{tmp_path}/o.db"
    s = parse_spec(tiny_spec(storage={"tracking": "sqlite:///m.db",
                                      "optuna": "postgresql://u:p@db/optuna"}))
    assert s.tracking_uri == f"sqlite:///{tmp_path}/m.db"
    assert s.optuna_storage == "postgresql://u:p@db/optuna"
    msg = str(pytest.raises(SpecError, parse_spec, tiny_spec(storage={"optuna": "optuna.db"}))
              .value)
    assert "`storage.optuna`" in msg and "sqlite:///optuna.db" in msg


def test_storage_precedence_spec_then_given_environment_then_default(monkeypatch):
    monkeypatch.setenv("STUDY_RESULTS_DIR", "from-os-environ")
    env = {"STUDY_OPTUNA_STORAGE": "postgresql://u:p@db/o",
           "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999", "STUDY_RESULTS_DIR": "/srv/r"}
    # a spec field wins; an empty one counts as unset, so the environment given wins
    assert resolve_storage({"optuna": "sqlite:///spec.db", "tracking": ""}, env) == {
        "optuna": "sqlite:///spec.db", "tracking": "http://127.0.0.1:5999",
        "results": "/srv/r"}
    # an explicit empty environment: the defaults, whatever os.environ holds
    assert resolve_storage({}, {}) == {"optuna": "sqlite:///optuna.db",
                                       "tracking": "sqlite:///mlflow.db",
                                       "results": "study_results"}
    assert resolve_storage({})["results"] == "from-os-environ"  # no mapping: os.environ


def test_unreachable_tracking_server_is_a_clear_error():
    import socket

    from study.tracking.writer import TrackingError, check_tracking_uri

    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackingError, match="unreachable.*mlflow server"):
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2)


def test_verdict_fields(tmp_path):
    s = parse_spec(tiny_spec(verdict={"equivalence_margin": 0.01, "by": "depth"}))
    assert s.verdict_metric == "test_accuracy" and s.margin == 0.01
    assert s.verdict_by == ("depth",) and s.verdict_mode == "max"
    raw = tiny_spec(verdict={"metric": "val_loss"})
    assert parse_spec(raw).verdict_mode == "min"
    no_compare = tiny_spec(verdict={"equivalence_margin": 0.01})
    del no_compare["compare"]
    msg = error_of(tmp_path, no_compare)
    assert "`verdict`" in msg and "compare" in msg
    msg = error_of(tmp_path, tiny_spec(verdict={"by": "norm"}))
    assert "`verdict.by`" in msg and "searched" in msg and "depth, lr" in msg
    msg = error_of(tmp_path, tiny_spec(verdict={"equivalence_margin": 0}))
    assert "`verdict.equivalence_margin`" in msg and "> 0" in msg


def test_scheduler_fields(tmp_path):
    s = parse_spec(tiny_spec(search={"scheduler": "asha", "grace_period": 2,
                                     "reduction_factor": 4}))
    assert (s.scheduler, s.grace_period, s.reduction_factor) == ("asha", 2, 4)
    msg = error_of(tmp_path, tiny_spec(search={"grace_period": 2}))
    assert "`search.grace_period`" in msg and "scheduler: asha" in msg
    msg = error_of(tmp_path, tiny_spec(search={"scheduler": "hyperband"}))
    assert "`search.scheduler`" in msg and "'asha'" in msg


def test_package_docstring_example_runs(monkeypatch):
    import doctest

    import study

    monkeypatch.chdir(SPECS.parent)
    result = doctest.testmod(study)
    assert result.attempted >= 2 and result.failed == 0


def test_fuse_and_runs_per_trial(tmp_path):
    from study.tune.runner import block_plan

    s = parse_spec(tiny_spec(repeats=4, train={"epochs": 2, "fuse": True}))  # YAML's `on`
    assert s.fuse == "on" and s.runs_per_trial is None
    cpus = {"CPU": 2.0, "GPU": 0.0}
    # fused: whole configurations per trial while the 2 configurations in flight fill 2 slots
    assert block_plan(s, cpus) == (True, 4)
    assert block_plan(parse_spec(tiny_spec(repeats=4, execution={"concurrency": 8},
                                           train={"fuse": "on"})), cpus) == (True, 1)
    auto = parse_spec(tiny_spec(repeats=4))
    assert auto.fuse == "auto" and block_plan(auto, cpus) == (False, 1)  # CPU: one pair
    gpu = parse_spec(tiny_spec(repeats=4, resources={"gpu": 0.5}))
    assert block_plan(gpu, {"CPU": 8.0, "GPU": 1.0}) == (True, 4)  # auto fuses on a GPU
    manual = parse_spec(tiny_spec(repeats=4, execution={"runs_per_trial": 4}))
    assert block_plan(manual, cpus) == (False, 2)  # 4 runs = 2 seeds x 2 levels
    msg = error_of(tmp_path, tiny_spec(train={"fuse": "always"}))
    assert "`train.fuse`" in msg and "'auto'" in msg
    msg = error_of(tmp_path, tiny_spec(train={"fuse": "on", "precision": "fp16"}))
    assert "`train.fuse`" in msg and "fp16" in msg
    msg = error_of(tmp_path, tiny_spec(execution={"runs_per_trial": 0}))
    assert "`execution.runs_per_trial`" in msg


def test_checkpoint_every(tmp_path):
    assert parse_spec(tiny_spec()).checkpoint_every is None  # auto: by time
    assert parse_spec(tiny_spec(execution={"checkpoint_every": "auto"})).checkpoint_every is None
    assert parse_spec(tiny_spec(execution={"checkpoint_every": 3})).checkpoint_every == 3
    assert parse_spec(tiny_spec(execution={"checkpoint_every": 0})).checkpoint_every == 0
    for bad in ("often", -1, 1.5):
        msg = error_of(tmp_path, tiny_spec(execution={"checkpoint_every": bad}))
        assert "`execution.checkpoint_every`" in msg and "Allowed: auto or an integer from 0 " \
            "to 10000" in msg, msg
