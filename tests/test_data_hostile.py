"""Hostile dataset files: checked by content before any run, never run as code, never a
traceback. Each format is tested over a class of bad files."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from study.data import formats as data_formats
from study.data.formats import write_idx
from study.data.load import check_dataset, load_splits
from study.spec import DatasetSpec, SpecError
from tests.conftest import ROOT, tiny_spec
from tests.test_data import make_cifar, make_idx

rng = np.random.default_rng(5)


def arrays(**over: np.ndarray) -> dict[str, np.ndarray]:
    a = {"x_train": rng.integers(0, 255, (50, 6, 6), dtype=np.uint8),
         "y_train": np.arange(50) % 4, "x_test": rng.integers(0, 255, (20, 6, 6), dtype=np.uint8),
         "y_test": np.arange(20) % 4}
    a.update(over)
    return a


def with_nan(x: np.ndarray, at: tuple[int, ...], v: float) -> np.ndarray:
    x = x.astype(np.float32)
    x[at] = v
    return x


def bad_label(n: int, at: int, v: int) -> np.ndarray:
    y = np.arange(n) % 4
    y[at] = v
    return y


def npz_header_only(path: Path, key: str, descr: str, shape: tuple[int, ...]) -> None:
    """An npz whose `key` array header claims `shape` but holds a few bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        for k, v in arrays().items():
            if k != key:
                with z.open(k + ".npy", "w") as fh:
                    np.lib.format.write_array(fh, v)
        z.writestr(key + ".npy", buf.getvalue() + b"\0" * 64)


def savez(**over: np.ndarray) -> Callable[[Path], None]:
    return lambda p: np.savez(p, **arrays(**over))


def truncated(p: Path) -> None:
    np.savez(p, **arrays())
    p.write_bytes(p.read_bytes()[:900])


def corrupt_member(p: Path) -> None:
    np.savez_compressed(p, **arrays(x_train=np.zeros((50, 6, 6), np.uint8)))
    raw = bytearray(p.read_bytes())
    at = raw.index(b"x_train.npy") + 60  # inside the compressed data of x_train
    raw[at:at + 8] = b"\xff" * 8
    p.write_bytes(bytes(raw))


def future_zip_version(p: Path) -> None:
    np.savez(p, **arrays())
    raw = bytearray(p.read_bytes())
    at = raw.index(b"PK\x01\x02") + 6  # version needed to extract, in the central directory
    raw[at:at + 2] = (134).to_bytes(2, "little")
    p.write_bytes(bytes(raw))


def missing_key(p: Path) -> None:
    a = arrays()
    del a["y_test"]
    np.savez(p, **a)


NPZ_CASES = {
    "label over the class bound": (savez(y_train=bad_label(50, 7, 5000)),
                                   "label 5000 at index 7"),
    "negative label": (savez(y_test=bad_label(20, 3, -1)), "label -1 at index 3"),
    "test label outside the training classes": (savez(y_test=bad_label(20, 11, 7)),
                                                "label 7 at index 11"),
    "one class": (savez(y_train=np.zeros(50, int)), "one class"),
    "NaN pixel": (savez(x_train=with_nan(arrays()["x_train"], (2, 1, 4), np.nan)),
                  "pixel nan at index (2, 1, 4)"),
    "inf pixel": (savez(x_test=with_nan(arrays()["x_test"], (5, 0, 0), -np.inf)),
                  "pixel -inf at index (5, 0, 0)"),
    "absurd pixel": (savez(x_test=with_nan(arrays()["x_test"], (1, 2, 3), 1e30)),
                     "at index (1, 2, 3)"),
    "lengths differ": (savez(y_train=np.arange(49) % 4), "49 labels for 50 images"),
    "shapes differ across splits": (
        savez(x_test=np.zeros((20, 7, 7), np.uint8)), "the same image shape in every split"),
    "float labels": (savez(y_train=np.zeros(50)), "dtype float64"),
    "string images": (savez(x_train=np.full((50, 6, 6), "a")), "dtype <U1"),
    "object array": (savez(y_test=np.array([1, "a"] * 10, dtype=object)), "object array"),
    "rank-2 images": (savez(x_train=np.zeros((50, 36), np.uint8)), "images of shape (50, 36)"),
    "2-column labels": (savez(y_train=np.zeros((50, 2), int)), "labels of shape (50, 2)"),
    "empty split": (savez(x_test=np.zeros((0, 6, 6), np.uint8), y_test=np.zeros(0, int)),
                    "empty"),
    "absurd size in the header": (
        lambda p: npz_header_only(p, "x_train", "|u1", (10**6, 4096, 4096)), "values"),
    "absurd image side": (lambda p: npz_header_only(p, "x_train", "|u1", (1, 5000, 5000)),
                          "images of shape (1, 5000, 5000)"),
    "truncated archive": (truncated, "npz"),
    "corrupt member": (corrupt_member, "(array x_train): unreadable"),
    "zip version 13.4": (future_zip_version, "NotImplementedError"),
    "not a zip": (lambda p: p.write_text("x_train,y_train\n1,2\n"), "not a readable .npz"),
    "a .npy, not an .npz": (lambda p: np.save(p.with_suffix(".npy"), np.zeros(3))
                            or p.with_suffix(".npy").rename(p), "not a readable .npz"),
    "missing array": (missing_key, "no array y_test"),
    "a folder": (lambda p: p.mkdir(), "a folder, where a file is expected"),
    "a pipe": (lambda p: os.mkfifo(p), "not a regular file"),
}


def expect_spec_error(ds: DatasetSpec, *needles: str) -> str:
    with pytest.raises(SpecError) as e:
        check_dataset(ds, "spec.yaml")
    msg = str(e.value)
    assert msg.startswith("spec.yaml: field `dataset."), msg
    assert "Allowed:" in msg and "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_hostile_npz_is_a_clear_error(tmp_path, case):
    make, needle = NPZ_CASES[case]
    path = tmp_path / "d.npz"
    make(path)
    expect_spec_error(DatasetSpec("npz", str(path)), str(path), needle)


def idx_case(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        make_idx(folder, gz=True)
        make(folder)
    return build


def idx_raw(name: str, raw: bytes) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / f"{name}.gz").unlink()
        (folder / name).write_bytes(raw)
    return write


def idx_write(name: str, arr: np.ndarray) -> Callable[[Path], None]:
    return lambda folder: write_idx(folder / f"{name}.gz", arr)


def corrupt_gz(folder: Path) -> None:
    f = folder / "train-images-idx3-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 16] = b"\x00" * 16
    f.write_bytes(bytes(raw))


def gz_bomb(folder: Path) -> None:
    """A small .gz whose header promises 10 labels and that inflates to 20 MB."""
    raw = bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\0" * (20 * 2**20)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw, 1))


LABELS, IMAGES = "train-labels-idx1-ubyte", "train-images-idx3-ubyte"
IDX_CASES = {
    "bad magic": (idx_raw(LABELS, b"PK\x03\x04junk"), "bad magic"),
    "unknown type": (idx_raw(LABELS, bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 5])), "0x42"),
    "header cut short": (idx_raw(IMAGES, bytes([0, 0, 8, 3, 0, 0])), "dimensions"),
    "data cut short": (idx_raw(IMAGES, bytes([0, 0, 8, 3]) + b"".join(
        d.to_bytes(4, "big") for d in (40, 28, 28)) + b"\1" * 100), "100 bytes, not the 31360"),
    "absurd size in the header": (idx_raw(IMAGES, bytes([0, 0, 8, 3]) + b"".join(
        d.to_bytes(4, "big") for d in (4 * 10**6, 1000, 1000))), "values"),
    "inflates past its header": (gz_bomb, "more than the 10 bytes"),
    "corrupt gzip": (corrupt_gz, "unreadable"),
    "test label outside the training classes": (
        idx_write("t10k-labels-idx1-ubyte", np.full(10, 12)), "label 12 at index 0"),
    "lengths differ": (idx_write(LABELS, np.zeros(39)), "39 labels for 40 images"),
    "labels as images": (idx_write(LABELS, np.zeros((40, 2, 2))), "labels of shape"),
    "NaN in float images": (idx_raw(IMAGES, bytes([0, 0, 0x0D, 3]) + b"".join(
        d.to_bytes(4, "big") for d in (40, 28, 28))
        + np.full((40, 28, 28), np.nan, ">f4").tobytes()), "pixel nan at index (0, 0, 0)"),
    "a folder for a file": (lambda f: (f / "t10k-images-idx3-ubyte.gz").unlink() or
                            (f / "t10k-images-idx3-ubyte").mkdir(), "no t10k-images-idx3-ubyte"),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_hostile_idx_is_a_clear_error(tmp_path, case):
    make, needle = IDX_CASES[case]
    idx_case(make)(tmp_path / "fm")
    expect_spec_error(DatasetSpec("idx", str(tmp_path / "fm")), str(tmp_path / "fm"), needle)


# --------------------------------------------------------------------------------------
# CIFAR-10 batches: pickles that would run code, and pickles that are merely wrong
# --------------------------------------------------------------------------------------


class Payload:
    """Pickles as a call of `fn(arg)`: what a crafted batch file does on pickle.load."""

    def __init__(self, fn: Callable[..., object], arg: str) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.fn, (self.arg,)


def payloads(marker: Path) -> dict[str, Payload]:
    touch = f"open({str(marker)!r}, 'w').close()"
    return {"os.system": Payload(os.system, f"touch {marker}"),
            "exec": Payload(exec, touch), "eval": Payload(eval, touch),
            "subprocess": Payload(subprocess.Popen, f"touch {marker}")}


def cifar_with(folder: Path, name: str, batch: object, protocol: int = 2) -> None:
    make_cifar(folder)
    (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("kind", ["os.system", "exec", "eval", "subprocess"])
def test_malicious_cifar_pickle_does_not_run(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = payloads(marker)[kind]
    evil = {b"data": payload, b"labels": [0]}
    if kind == "os.system":  # the payload is live: plain pickle.load runs it
        pickle.loads(pickle.dumps(evil))
        assert marker.exists()
        marker.unlink()
    cifar_with(tmp_path / "c", "data_batch_3", evil)
    expect_spec_error(DatasetSpec("cifar10", str(tmp_path / "c")), "data_batch_3",
                      "which this reader refuses")
    assert not marker.exists()


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2 and numpy 1.x wrote the real CIFAR-10 files (protocol 2, byte
    strings, numpy.core names)."""
    def s(b: bytes) -> bytes:
        return b"T" + len(b).to_bytes(4, "little") + b

    n = len(data)
    arr = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b")
           + b"\x87R(K\x01J" + n.to_bytes(4, "little") + b"M\x00\x0c\x86cnumpy\ndtype\n"
           + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|")
           + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(data.tobytes()) + b"tb")
    labs = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (b"\x80\x02}(" + s(b"batch_label") + s(b"training batch 1 of 5") + s(b"data")
            + arr + s(b"labels") + labs + b"u.")


@pytest.mark.parametrize("protocol", ["py2", 0, 2, 3, 4, 5])
def test_valid_cifar_batches_load_in_every_protocol(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    data = np.random.default_rng(3).integers(0, 256, (7, 3072), dtype=np.uint8)
    labels = [3, 9, 0, 1, 2, 8, 5]
    raw = py2_batch(data, labels) if protocol == "py2" else pickle.dumps(
        {"data": data, "labels": [np.int64(v) for v in labels]}, protocol=protocol)
    (folder / "test_batch").write_bytes(raw)
    assert pickle.loads(raw, encoding="bytes")  # the handmade file is a valid pickle
    check_dataset(DatasetSpec("cifar10", str(folder)), "spec.yaml")
    s = load_splits(DatasetSpec("cifar10", str(folder), val_fraction=0.1))
    assert s.x_test.shape == (7, 3, 32, 32) and list(s.y_test) == labels
    raw_x, _, x_test, y_test = data_formats.read_cifar10(str(folder))
    assert np.array_equal(x_test, data.reshape(7, 3, 32, 32) / np.float32(255.0))


# Handmade pickles that misuse what the reader admits, or reach past it.
CRAFTED = {
    "huge memo index": (b"\x80\x02}r\xff\xff\xff\x7f.", "memo index"),  # a 32 GiB memo
    "INST opcode": (b"(S'touch pwned'\nios\nsystem\n.", "opcode INST"),
    "state for a global": (b"\x80\x02cnumpy\ndtype\n}b.", "gives a global a state"),
    "call of numpy.ndarray": (b"\x80\x02cnumpy\nndarray\nK\x05\x85R.", "calls numpy.ndarray"),
    "dtype with fields": (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8\x85R(K\x03X\x01\x00"
                          b"\x00\x00<X\x01\x00\x00\x00a\x85}NJ\xff\xff\xff\xffJ\xff\xff\xff"
                          b"\xffK\x00tb.", "not that of a plain numeric dtype"),
    "persistent id": (b"\x80\x02X\x01\x00\x00\x00xQ.", "opcode BINPERSID"),
}


CIFAR_CASES: dict[str, tuple[object, str]] = {
    "label out of range": ({b"data": np.zeros((8, 3072), np.uint8),
                            b"labels": [0, 1, 2, 3, 4, 5, 6, 12]}, "label 12 at index 7"),
    "label of another type": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, "1"]},
                              "label '1' at index 1"),
    "wrong data shape": ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]},
                         "shape (2, 3000)"),
    "data as a list": ({b"data": [[0] * 3072], b"labels": [0]}, "its data is a list"),
    "pixel out of range": ({b"data": np.full((1, 3072), 300, np.int32), b"labels": [0]},
                           "pixel 300 at index (0, 0)"),
    "lengths differ": ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]},
                       "3 images but 2 labels"),
    "no labels": ({b"data": np.zeros((3, 3072), np.uint8)}, "no `labels` entry"),
    "not a dict": ([1, 2, 3], "holds a list of 3 items"),
    "object array": ({b"data": np.array([None] * 3072, dtype=object).reshape(1, 3072),
                      b"labels": [0]}, "numeric dtypes only"),
    "array subclass": ({b"data": np.ma.zeros((1, 3072), np.uint8), b"labels": [0]},
                       "which this reader refuses"),
}


@pytest.mark.parametrize("case", [*CIFAR_CASES, *CRAFTED, "truncated", "a folder"])
def test_bad_cifar_batch_is_a_clear_error(tmp_path, case):
    folder = tmp_path / "c"
    if case in CIFAR_CASES:
        cifar_with(folder, "data_batch_2", CIFAR_CASES[case][0])
        needle = CIFAR_CASES[case][1]
    else:
        make_cifar(folder)
        f = folder / "data_batch_2"
        if case in CRAFTED:
            f.write_bytes(CRAFTED[case][0])
            needle = CRAFTED[case][1]
        elif case == "truncated":
            f.write_bytes(f.read_bytes()[:5000])
            needle = "not a plain-data pickle"
        else:
            f.unlink()
            f.mkdir()
            needle = "a folder, where a file is expected"
    expect_spec_error(DatasetSpec("cifar10", str(folder)), str(folder / "data_batch_2"),
                      needle)


# --------------------------------------------------------------------------------------
# Splits, bounds and the read-once hand-off
# --------------------------------------------------------------------------------------


def test_split_and_synthetic_bounds(tmp_path):
    np.savez(tmp_path / "d.npz", **arrays(x_train=np.zeros((1, 6, 6), np.uint8),
                                          y_train=np.array([3])))
    expect_spec_error(DatasetSpec("npz", str(tmp_path / "d.npz"), val_fraction=0.9),
                      "dataset.val_fraction", "leaving none to train on")
    expect_spec_error(DatasetSpec("synthetic", samples=10**7, image_size=256),
                      "dataset.samples", "pixel values")
    check_dataset(DatasetSpec("synthetic"), "spec.yaml")  # the defaults pass
    check_dataset(DatasetSpec("digits", path=str(tmp_path)), "spec.yaml")  # built in: no file


def test_checked_file_is_read_once_unless_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays())
    ds = DatasetSpec("npz", str(path))
    check_dataset(ds, "spec.yaml")
    reads = []
    real_read = data_formats.read
    monkeypatch.setattr(data_formats, "read", lambda *a: reads.append(a) or real_read(*a))
    assert load_splits(ds).x_test.shape == (20, 1, 6, 6) and reads == []
    check_dataset(ds, "spec.yaml")
    np.savez(path, **arrays(y_test=bad_label(20, 2, 9)))  # changed after the check
    os.utime(path, ns=(1, 1))
    with pytest.raises(SpecError, match="label 9 at index 2"):
        load_splits(ds)
    assert len(reads) == 2


# --------------------------------------------------------------------------------------
# The command line: exit 2, one `error:` line, no traceback, no MLflow run
# --------------------------------------------------------------------------------------


def cli(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "study.cli", *args], cwd=workdir, env=environ,
                          capture_output=True, text=True, timeout=120)


def one_error_line(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("fmt", ["npz", "cifar10"])
def test_cli_validate_bad_data_file(workdir, fmt):
    if fmt == "npz":
        np.savez(workdir / "d.npz", **arrays(y_train=bad_label(50, 7, 5000)))
        dataset, needle = "npz:d.npz", "label 5000 at index 7"
    else:
        cifar_with(workdir / "c", "test_batch",
                   {b"data": Payload(os.system, f"touch {workdir / 'pwned'}"), b"labels": []})
        dataset, needle = "cifar10:c", "it names posix.system, which this reader refuses"
    (workdir / "spec.yaml").write_text(yaml.safe_dump(tiny_spec(dataset=dataset)))
    p = cli(workdir, "validate", "spec.yaml")
    one_error_line(p, "spec.yaml: field `dataset.path`", needle)
    assert not (workdir / "pwned").exists()


def test_cli_run_bad_npz_stops_before_mlflow(workdir):
    from mlflow.tracking import MlflowClient

    np.savez(workdir / "d.npz", **arrays(x_test=with_nan(arrays()["x_test"], (0, 0, 0),
                                                        np.nan)))
    (workdir / "spec.yaml").write_text(yaml.safe_dump(tiny_spec(dataset="npz:d.npz")))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    p = cli(workdir, "run", "spec.yaml", "--quiet", MLFLOW_TRACKING_URI=uri,
            STUDY_OPTUNA_STORAGE=f"sqlite:///{workdir / 'optuna.db'}")
    one_error_line(p, "pixel nan at index (0, 0, 0)")
    assert not (workdir / "optuna.db").exists()
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("tiny") is None
    ids = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(ids) == []
