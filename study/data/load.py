"""Datasets -> fixed, seeded train/val/test splits -> tensors on the training device.

Nothing is loaded at import. :func:`check_dataset` checks a dataset file by content before
any run (the driver calls it first); :func:`load_tensors` caches per process (a Ray worker
that is reused for many runs loads its data once).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from study.data import formats as data_formats
from study.errors import SpecError
from study.spec import DatasetSpec

if TYPE_CHECKING:
    import torch

__all__ = ["Splits", "TensorData", "check_dataset", "load_splits", "load_tensors"]


@dataclass(frozen=True)
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True)
class TensorData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]


def load_splits(ds: DatasetSpec) -> Splits:
    """Read a dataset and split it. The split depends only on the spec (`split_seed`)."""
    rng = np.random.default_rng(ds.split_seed)
    if ds.name in ("digits", "synthetic"):
        x, y = read_digits() if ds.name == "digits" else _synthetic(ds)
        perm = rng.permutation(len(x))
        n_test = max(1, int(round(ds.test_fraction * len(x))))
        test, pool = perm[:n_test], perm[n_test:]
        x_test, y_test = x[test], y[test]
        x_pool, y_pool = x[pool], y[pool]
    else:
        x_pool, y_pool, x_test, y_test = _read_file(ds)
        perm = rng.permutation(len(x_pool))
        x_pool, y_pool = x_pool[perm], y_pool[perm]
    n_val = int(round(ds.val_fraction * len(x_pool)))
    x_val, y_val = x_pool[:n_val], y_pool[:n_val]
    x_train, y_train = x_pool[n_val:], y_pool[n_val:]
    if ds.limit is not None:
        x_train, y_train = x_train[: ds.limit], y_train[: ds.limit]
    if len(x_train) == 0:
        raise ValueError(f"dataset {ds.name!r}: the training split is empty")
    num_classes = int(max(y_train.max(), y_test.max(), y_val.max(initial=0))) + 1
    # Per-channel standardisation with training-split statistics only.
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-6

    def norm(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    return Splits(norm(x_train), y_train, norm(x_val), y_val, norm(x_test), y_test,
                  num_classes)


def check_dataset(ds: DatasetSpec, source: str = "<dict>") -> None:
    """Check a dataset before any run: a file's content (see :mod:`study.data.formats` for
    what is checked and the bounds), and that the splits the spec asks for are non-empty.

    What a file held is kept for the next :func:`load_splits` of the same, unchanged files
    in this process, so the driver reads it once.

    Raises:
        SpecError: naming the spec file, the field, the data file, what is wrong (with the
            bad value) and what is allowed.
    """
    if ds.name == "synthetic":
        _check_synthetic(ds, source)
        return
    if ds.path is None or ds.name not in data_formats.FILE_DATASETS:  # built in (digits)
        return
    try:
        arrays = data_formats.read(ds.name, ds.path)
    except data_formats.DataFileError as e:
        raise SpecError(f"{source}: field `dataset.path`: {e}") from None
    n_pool = len(arrays[0])
    n_val = int(round(ds.val_fraction * n_pool))
    if n_pool - n_val < 1:
        raise SpecError(
            f"{source}: field `dataset.val_fraction`: {ds.val_fraction} holds out {n_val} of "
            f"the {n_pool} training examples of {ds.path}, leaving none to train on. Allowed: "
            "a smaller fraction, or more training examples.")
    _READ.clear()
    _READ[_file_key(ds)] = arrays


def _check_synthetic(ds: DatasetSpec, source: str) -> None:
    values = ds.samples * ds.channels * ds.image_size ** 2
    if values > data_formats.MAX_VALUES:
        raise SpecError(
            f"{source}: field `dataset.samples`: {ds.samples} samples of {ds.channels}x"
            f"{ds.image_size}x{ds.image_size} make {values} pixel values. Allowed: at most "
            f"{data_formats.MAX_VALUES} (fewer samples, a smaller image_size or channels).")
    if ds.classes > data_formats.MAX_CLASSES:
        raise SpecError(f"{source}: field `dataset.classes`: {ds.classes}. Allowed: 2.."
                        f"{data_formats.MAX_CLASSES}.")


# Arrays check_dataset read, for the load_splits that follows (one dataset at most).
_READ: dict[tuple[Any, ...], data_formats.Arrays] = {}


def _read_file(ds: DatasetSpec) -> data_formats.Arrays:
    if ds.path is None:  # the spec layer guarantees a path; keep the error clear anyway
        raise ValueError(f"dataset {ds.name!r} needs a path")
    kept = _READ.pop(_file_key(ds), None)
    return kept if kept is not None else data_formats.read(ds.name, ds.path)


def _file_key(ds: DatasetSpec) -> tuple[Any, ...]:
    """The dataset's name and path, and the size and modification time of each file there:
    a file changed since it was checked is read (and checked) again."""
    p = Path(str(ds.path)).resolve()
    try:
        files = sorted(os.scandir(p), key=lambda e: e.name) if p.is_dir() else [p]
        stats = tuple((os.fspath(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:
        stats = ()
    return ds.name, str(p), stats


_CACHE: dict[tuple[Any, ...], TensorData] = {}


def load_tensors(ds: DatasetSpec, device: str | torch.device = "cpu",
                 splits: Splits | None = None) -> TensorData:
    """Splits as tensors resident on `device`, cached for the life of the process.

    `splits`, when given, are used instead of reading the dataset (a Ray worker gets them
    from the object store: no worker needs the file)."""
    import torch

    key = (tuple(sorted(ds.as_dict().items())), str(device))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    s = splits if splits is not None else load_splits(ds)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    out = TensorData(t(s.x_train), t(s.y_train), t(s.x_val), t(s.y_val), t(s.x_test),
                     t(s.y_test), s.num_classes, s.input_shape)
    _CACHE[key] = out
    return out


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (no download), read from its CSV directly: the same
    arrays as ``sklearn.datasets.load_digits`` without importing scikit-learn (over a
    second, paid by every fresh worker)."""
    import importlib.util

    found = importlib.util.find_spec("sklearn")
    path = os.path.join(list(found.submodule_search_locations or [""])[0], "datasets", "data",
                        "digits.csv.gz") if found else ""
    if os.path.exists(path):
        d = np.loadtxt(path, delimiter=",")
        data, target = d[:, :-1], d[:, -1]
    else:  # a future layout: ask scikit-learn
        from sklearn.datasets import load_digits

        b = load_digits()
        data, target = b.data, b.target
    x = (data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    return x, target.astype(np.int64)


def _synthetic(ds: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Seeded class prototypes (a random binary 3x3 layout, upsampled) plus Gaussian noise:
    learnable by a small CNN, not trivial, instant to make."""
    rng = np.random.default_rng(10_000 + ds.split_seed)
    size, grid = ds.image_size, 3
    coarse = (rng.random((ds.classes, ds.channels, grid, grid)) > 0.5).astype(np.float32)
    up = (np.arange(size) * grid) // size
    protos = coarse[:, :, up][:, :, :, up]
    y = np.arange(ds.samples) % ds.classes
    rng.shuffle(y)
    noise = rng.normal(0.0, 0.25, size=(ds.samples, ds.channels, size, size))
    return (protos[y] + noise).astype(np.float32), y.astype(np.int64)
