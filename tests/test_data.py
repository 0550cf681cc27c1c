"""Datasets: every on-disk format from tiny files; fixed, seeded splits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from study.data.formats import check_path, read_idx, write_idx
from study.data.load import load_splits, load_tensors
from study.spec import DatasetSpec, SpecError, parse_spec
from tests.conftest import tiny_spec


def make_npz(path, n_train=50, n_test=20, shape=(6, 6)):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (n_train, *shape), dtype=np.uint8),
             y_train=rng.integers(0, 4, n_train), x_test=rng.integers(0, 255, (n_test, *shape),
                                                                      dtype=np.uint8),
             y_test=rng.integers(0, 4, n_test))


def make_idx(folder, gz):
    rng = np.random.default_rng(1)
    sfx = ".gz" if gz else ""
    folder.mkdir(exist_ok=True)
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 255, (40, 28, 28)))
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", rng.integers(0, 10, 40))
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 255, (10, 28, 28)))
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, 10))


def make_cifar(folder):
    rng = np.random.default_rng(2)
    folder.mkdir(exist_ok=True)
    for name, n in [*((f"data_batch_{i}", 6) for i in range(1, 6)), ("test_batch", 5)]:
        d = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
             b"labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(d))


def test_npz(tmp_path):
    make_npz(tmp_path / "d.npz")
    s = load_splits(DatasetSpec("npz", str(tmp_path / "d.npz"), val_fraction=0.2))
    assert s.x_train.shape == (40, 1, 6, 6) and s.x_val.shape == (10, 1, 6, 6)
    assert s.x_test.shape == (20, 1, 6, 6) and s.x_train.dtype == np.float32
    assert abs(float(s.x_train.mean())) < 1e-4  # standardised with training statistics


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder(tmp_path, gz):
    make_idx(tmp_path / "fm", gz)
    assert check_path("idx", str(tmp_path / "fm")) is None
    s = load_splits(DatasetSpec("idx", str(tmp_path / "fm"), val_fraction=0.25))
    assert s.x_train.shape == (30, 1, 28, 28) and s.x_test.shape == (10, 1, 28, 28)
    assert s.input_shape == (1, 28, 28)
    raw = read_idx(tmp_path / "fm" / f"t10k-labels-idx1-ubyte{'.gz' if gz else ''}")
    assert raw.shape == (10,) and raw.dtype == np.uint8


def test_idx_bad_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "x")


def test_cifar10_batches(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-py")
    s = load_splits(DatasetSpec("cifar10", str(tmp_path / "cifar-10-batches-py"),
                                val_fraction=0.1))
    assert s.x_train.shape == (27, 3, 32, 32) and s.x_test.shape == (5, 3, 32, 32)


def test_fashion_mnist_alias_points_at_debian_folder(tmp_path):
    make_idx(tmp_path / "fm", gz=True)
    s = parse_spec(tiny_spec(dataset={"name": "fashion-mnist", "path": str(tmp_path / "fm")}))
    assert s.dataset.name == "idx"
    with pytest.raises(SpecError, match="apt-get install dataset-fashion-mnist"):
        parse_spec(tiny_spec(dataset={"name": "fashion-mnist", "path": str(tmp_path / "no")}))


def test_digits_and_fixed_split():
    ds = DatasetSpec("digits")
    a, b = load_splits(ds), load_splits(ds)
    assert a.x_train.shape[1:] == (1, 8, 8) and a.num_classes == 10
    n = len(a.x_train) + len(a.x_val) + len(a.x_test)
    assert n == 1797 and len(a.x_test) == round(0.2 * 1797)
    assert np.array_equal(a.y_train, b.y_train) and np.array_equal(a.x_val, b.x_val)
    c = load_splits(DatasetSpec("digits", split_seed=1))
    assert not np.array_equal(a.y_train, c.y_train)


def test_digits_read_directly_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    from study.data.load import read_digits

    x, y = read_digits()
    ref = load_digits()
    assert np.array_equal(x.reshape(len(x), -1) * 16.0, ref.data.astype(np.float32))
    assert np.array_equal(y, ref.target)


def test_synthetic_limit_and_tensor_cache():
    ds = DatasetSpec("synthetic", samples=300, image_size=5, channels=2, classes=3, limit=50)
    s = load_splits(ds)
    assert s.x_train.shape == (50, 2, 5, 5) and s.num_classes == 3
    t1, t2 = load_tensors(ds), load_tensors(ds)
    assert t1 is t2 and t1.x_train.shape == (50, 2, 5, 5)
