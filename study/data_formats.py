"""Readers for on-disk dataset formats (numpy only; no torch).

Each reader returns ``(x_train, y_train, x_test, y_test)`` with images as float32 arrays of
shape (N, C, H, W) scaled to [0, 1] and labels as int64 arrays.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def check_path(name: str, path: str) -> str | None:
    """Return None if `path` looks usable for dataset `name`, else what is allowed."""
    p = Path(path)
    if name == "npz":
        if not p.is_file():
            return "an existing .npz file with arrays " + ", ".join(NPZ_KEYS)
        try:
            with np.load(p) as z:
                missing = [k for k in NPZ_KEYS if k not in z.files]
        except Exception as e:  # a corrupt or non-npz file
            return f"a readable .npz file ({type(e).__name__}: {e})"
        if missing:
            return "a .npz file with arrays " + ", ".join(NPZ_KEYS) + " (missing: " + \
                ", ".join(missing) + ")"
        return None
    if name == "idx":
        if not p.is_dir():
            return "a folder of MNIST-format IDX files (" + ", ".join(IDX_FILES.values()) + \
                ", optionally .gz)"
        missing = [f for f in IDX_FILES.values() if _idx_file(p, f) is None]
        if missing:
            return "a folder holding " + ", ".join(IDX_FILES.values()) + \
                " (optionally .gz); missing: " + ", ".join(missing)
        return None
    if name == "cifar10":
        if not p.is_dir():
            return ("the folder `cifar-10-batches-py` from the CIFAR-10 python version "
                    "(www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked)")
        missing = [f for f in [*CIFAR_TRAIN, CIFAR_TEST] if not (p / f).is_file()]
        if missing:
            return ("the folder `cifar-10-batches-py` with data_batch_1..5 and test_batch "
                    "(download www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack "
                    "it); missing: " + ", ".join(missing))
        return None
    return None


def read_npz(path: str) -> Arrays:
    with np.load(path) as z:
        xs = [np.asarray(z[k]) for k in NPZ_KEYS]
    x_train, y_train, x_test, y_test = xs
    return _images(x_train), _labels(y_train), _images(x_test), _labels(y_test)


def read_idx_folder(path: str) -> Arrays:
    p = Path(path)
    arrs = {}
    for key, stem in IDX_FILES.items():
        f = _idx_file(p, stem)
        if f is None:
            raise FileNotFoundError(f"{p}: missing {stem} (or {stem}.gz)")
        arrs[key] = read_idx(f)
    return (_images(arrs["x_train"]), _labels(arrs["y_train"]),
            _images(arrs["x_test"]), _labels(arrs["y_test"]))


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
             0x0E: ">f8"}.get(raw[2])
    if dtype is None:
        raise ValueError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, "
                         f"found {data.size}")
    return data.reshape(dims)


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz). For tests."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def read_cifar10(path: str) -> Arrays:
    p = Path(path)

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(p / name, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return x, np.asarray(d[b"labels"])

    parts = [batch(n) for n in CIFAR_TRAIN]
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    x_test, y_test = batch(CIFAR_TEST)
    return _images(x_train), _labels(y_train), _images(x_test), _labels(y_test)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _images(x: np.ndarray) -> np.ndarray:
    """To float32 (N, C, H, W) in [0, 1]: accepts (N, H, W), (N, H, W, C) or (N, C, H, W)."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise ValueError(f"images must have 3 or 4 dimensions, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    hi = float(x.max()) if x.size else 1.0
    return x / 255.0 if hi > 1.5 else x


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    return y.astype(np.int64)
