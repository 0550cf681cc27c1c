"""Readers for on-disk dataset formats (numpy only; no torch), checked by content.

A dataset file is hostile input: every reader bounds what it reads before reading it, runs
no code from the file (CIFAR batches go through a restricted unpickler, npz arrays never
through pickle) and checks what it read. Each reader returns ``(x_train, y_train, x_test,
y_test)`` with images as float32 arrays of shape (N, C, H, W) scaled to [0, 1] and labels as
int64 arrays, or raises :class:`DataFileError` naming the file, what is wrong and what is
allowed.
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from study.data import plain_pickle
from study.errors import SpecError
from study.terminal import short_repr, short_text

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

# What a dataset file may hold; the error messages quote these bounds.
MAX_VALUES = 2**30  # pixel values over all splits: 4 GiB as float32, held by every worker
MAX_SIDE = 4096  # image height and width, in pixels
MAX_CHANNELS = 64
MAX_CLASSES = 1000  # labels 0..999, inferred as max(y_train) + 1
MAX_PIXEL = 1e6  # |pixel value|: keeps float32 means and variances finite
MAX_PICKLE_BYTES = 512 * 2**20  # one CIFAR batch file (a real one is 31 MB)
MAX_PICKLE_OPS = 1_000_000  # pickle opcodes in one batch (a real one has about 40 000)
CIFAR_CLASSES = 10
CIFAR_PIXELS = 3 * 32 * 32

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

NPZ_ALLOWED = "an .npz file (np.savez) with numeric arrays " + ", ".join(NPZ_KEYS)
IDX_ALLOWED = ("a folder of MNIST-format IDX files (" + ", ".join(IDX_FILES.values())
               + ", optionally .gz)")
CIFAR_ALLOWED = ("a CIFAR-10 python batch: a pickled dict whose `data` is a uint8 array of "
                 f"shape (N, {CIFAR_PIXELS}) and whose `labels` are N integers 0..9, holding "
                 "plain data and numpy arrays only")


class DataFileError(SpecError):
    """A dataset file is unusable. The message names the file, what is wrong, what is allowed."""

    def __init__(self, where: str, problem: str, allowed: str) -> None:
        super().__init__(f"{where}: {problem}. Allowed: {allowed}.")


def read(name: str, path: str) -> Arrays:
    """Read and check the dataset `name` (one of :data:`FILE_DATASETS`) at `path`."""
    readers: dict[str, Callable[[str], Arrays]] = {
        "npz": read_npz, "idx": read_idx_folder, "cifar10": read_cifar10}
    return readers[name](path)


FILE_DATASETS = ("npz", "idx", "cifar10")  # the datasets read from files by `read`


def check_path(name: str, path: str) -> str | None:
    """Return None if `path` looks usable for dataset `name` (a cheap look at names, not
    content: see :func:`read`), else what is allowed."""
    checks: dict[str, Callable[[Path], str | None]] = {
        "npz": _npz_path_problem, "idx": _idx_path_problem, "cifar10": _cifar_path_problem}
    return checks[name](Path(path)) if name in checks else None


def _npz_path_problem(p: Path) -> str | None:
    if not p.is_file():
        return "an existing " + NPZ_ALLOWED[3:]
    try:
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:  # not a zip archive
        return f"a readable .npz file ({type(e).__name__}: {e})"
    missing = [k for k in NPZ_KEYS if k + ".npy" not in names]
    if missing:
        return NPZ_ALLOWED + " (missing: " + ", ".join(missing) + ")"
    return None


def _idx_path_problem(p: Path) -> str | None:
    if not p.is_dir():
        return IDX_ALLOWED
    missing = [f for f in IDX_FILES.values() if _idx_file(p, f) is None]
    if missing:
        return "a folder holding " + ", ".join(IDX_FILES.values()) + \
            " (optionally .gz); missing: " + ", ".join(missing)
    return None


def _cifar_path_problem(p: Path) -> str | None:
    if not p.is_dir():
        return ("the folder `cifar-10-batches-py` from the CIFAR-10 python version "
                "(www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked)")
    missing = [f for f in [*CIFAR_TRAIN, CIFAR_TEST] if not (p / f).is_file()]
    if missing:
        return ("the folder `cifar-10-batches-py` with data_batch_1..5 and test_batch "
                "(download www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and unpack "
                "it); missing: " + ", ".join(missing))
    return None


# --------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------


def read_npz(path: str) -> Arrays:
    p = Path(path)
    _need_file(p, NPZ_ALLOWED)
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            missing = [k for k in NPZ_KEYS if k + ".npy" not in names]
            if missing:
                shown = ", ".join(short_repr(n) for n in names[:10]) or "nothing"
                raise DataFileError(path, f"no array {', '.join(missing)} (it holds {shown})",
                                    NPZ_ALLOWED)
            raw = {k: _npz_array(z, k, f"{path} (array {k})") for k in NPZ_KEYS}
    except DataFileError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError,
            NotImplementedError) as e:  # not a zip, or a corrupt or exotic one
        raise DataFileError(path, f"not a readable .npz (zip) archive ({type(e).__name__}: "
                            f"{short_text(str(e))})", NPZ_ALLOWED) from None
    return checked(raw, {k: f"{path} (array {k})" for k in NPZ_KEYS})


def _npz_array(z: zipfile.ZipFile, key: str, where: str) -> np.ndarray:
    """One array of an npz, its header checked before any of its data is read."""
    fmt = np.lib.format
    try:
        with z.open(key + ".npy") as fh:
            version = fmt.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                raise DataFileError(where, f".npy format version {version}",
                                    "versions 1.0 and 2.0 (what np.save writes for numeric "
                                    "arrays)")
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else \
                fmt.read_array_header_2_0
            shape, _, dtype = read_header(fh)
        _check_array_header(shape, dtype, where, key.startswith("x"))
        with z.open(key + ".npy") as fh:
            return fmt.read_array(fh, allow_pickle=False)
    except DataFileError:
        raise
    except (ValueError, zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
            NotImplementedError) as e:  # truncated, corrupt, encrypted, odd compression
        raise DataFileError(where, f"unreadable ({type(e).__name__}: {short_text(str(e))})",
                            NPZ_ALLOWED) from None


# --------------------------------------------------------------------------------------
# IDX (the MNIST format)
# --------------------------------------------------------------------------------------


def read_idx_folder(path: str) -> Arrays:
    p = Path(path)
    if not p.is_dir():
        raise DataFileError(path, "not a folder", IDX_ALLOWED)
    raw, where = {}, {}
    for key, stem in IDX_FILES.items():
        f = _idx_file(p, stem)
        if f is None:
            raise DataFileError(path, f"no {stem} (or {stem}.gz)", IDX_ALLOWED)
        raw[key], where[key] = read_idx(f, images=key.startswith("x")), str(f)
    return checked(raw, where)


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
              0x0E: ">f8"}


def read_idx(path: Path, images: bool | None = None) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not. Its header is checked before
    its data is read (`images`: True/False checks it as images/labels; None: any shape)."""
    where = str(path)
    allowed = "an IDX file: 0, 0, a type code, the number of dimensions, the dimensions, data"
    _need_file(path, allowed)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataFileError(where, f"not an IDX file (bad magic number {head!r})",
                                    allowed)
            dtype = _IDX_TYPES.get(head[2])
            if dtype is None:
                raise DataFileError(where, f"unknown IDX data type 0x{head[2]:02x}",
                                    "types 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E")
            dim_bytes = fh.read(4 * head[3])
            dims = tuple(int.from_bytes(dim_bytes[i:i + 4], "big")
                         for i in range(0, len(dim_bytes) - 3, 4))
            if len(dims) != head[3] or not 1 <= len(dims) <= 4:
                raise DataFileError(where, f"header with {head[3]} dimensions, "
                                    f"{len(dims)} present", "1 to 4 dimensions")
            if images is not None:
                _check_array_header(dims, np.dtype(dtype), where, images)
            elif math.prod(dims) > MAX_VALUES:
                raise DataFileError(where, f"shape {dims}", f"at most {MAX_VALUES} values")
            need = math.prod(dims) * np.dtype(dtype).itemsize
            data = fh.read(need + 1)  # one more byte: a longer file is as wrong as a short one
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a corrupt .gz
        raise DataFileError(where, f"unreadable ({type(e).__name__}: {short_text(str(e))})",
                            allowed) from None
    if len(data) != need:
        found = "more than" if len(data) > need else f"{len(data)} bytes, not"
        raise DataFileError(where, f"its data has {found} the {need} bytes its header "
                            f"(shape {dims}) promises", allowed)
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz). For tests."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


# --------------------------------------------------------------------------------------
# CIFAR-10 python batches (pickles), read without running anything from them
# --------------------------------------------------------------------------------------


def read_cifar10(path: str) -> Arrays:
    p = Path(path)
    if not p.is_dir():
        raise DataFileError(path, "not a folder", "the folder `cifar-10-batches-py` "
                            "(data_batch_1..5 and test_batch)")
    parts = [read_cifar_batch(p / n) for n in CIFAR_TRAIN]
    x_test, y_test = read_cifar_batch(p / CIFAR_TEST)
    raw = {"x_train": np.concatenate([x for x, _ in parts]),
           "y_train": np.concatenate([y for _, y in parts]), "x_test": x_test, "y_test": y_test}
    train = f"{p}/data_batch_1..5"
    return checked(raw, {"x_train": f"{train} (data)", "y_train": f"{train} (labels)",
                         "x_test": f"{p / CIFAR_TEST} (data)",
                         "y_test": f"{p / CIFAR_TEST} (labels)"}, CIFAR_CLASSES)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    where = str(path)
    batch = _load_plain_pickle(path)
    if not isinstance(batch, dict):
        raise DataFileError(where, f"holds {_describe(batch)}, not a dict", CIFAR_ALLOWED)
    data, labels = (_entry(batch, k, where) for k in ("data", "labels"))
    if not (isinstance(data, np.ndarray) and data.dtype.kind in "iu" and data.ndim == 2
            and data.shape[1] == CIFAR_PIXELS):
        raise DataFileError(where, f"its data is {_describe(data)}", CIFAR_ALLOWED)
    _first_bad(data, (data < 0) | (data > 255), where, "pixel", "pixels 0..255")
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.ndim == 1:
        y = labels.astype(np.int64)
    elif isinstance(labels, list):
        bad = next((i for i, v in enumerate(labels)
                    if type(v) is not int or not 0 <= v < CIFAR_CLASSES), None)
        if bad is not None:
            raise DataFileError(where, f"label {short_repr(labels[bad])} at index {bad}",
                                f"integer labels 0..{CIFAR_CLASSES - 1}")
        y = np.array(labels, dtype=np.int64)
    else:
        raise DataFileError(where, f"its labels are {_describe(labels)}", CIFAR_ALLOWED)
    if len(y) != len(data):
        raise DataFileError(where, f"{len(data)} images but {len(y)} labels", CIFAR_ALLOWED)
    return data.reshape(-1, 3, 32, 32), y


def _entry(batch: dict[Any, Any], key: str, where: str) -> Any:
    for k in (key.encode(), key):  # bytes keys (Python 2 pickles) or str keys
        if k in batch:
            v = batch[k]
            return v.array if isinstance(v, plain_pickle.PickledArray) else v
    keys = ", ".join(short_repr(k) for k in list(batch)[:10]) or "none"
    raise DataFileError(where, f"no `{key}` entry (its keys: {keys})", CIFAR_ALLOWED)


def _load_plain_pickle(path: Path) -> Any:
    """A batch file's plain data (study.data.plain_pickle: no class, no callable, no code from the
    file); arrays come back as :class:`plain_pickle.PickledArray` holders (`.array`)."""
    where = str(path)
    _need_file(path, CIFAR_ALLOWED)
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise DataFileError(where, f"{size} bytes", f"a batch file of at most "
                                f"{MAX_PICKLE_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as e:
        raise DataFileError(where, f"unreadable ({type(e).__name__}: {e.strerror})",
                            CIFAR_ALLOWED) from None
    try:
        return plain_pickle.load(raw, max_ops=MAX_PICKLE_OPS)
    except plain_pickle.REFUSED as e:
        raise DataFileError(where, f"not a plain-data pickle ({type(e).__name__}: "
                            f"{short_text(str(e), 200)})", CIFAR_ALLOWED) from None


# --------------------------------------------------------------------------------------
# Content checks shared by every format
# --------------------------------------------------------------------------------------


def checked(raw: Mapping[str, np.ndarray], where: Mapping[str, str],
            max_classes: int = MAX_CLASSES) -> Arrays:
    """Check the four arrays by content and convert them (see the module docstring).

    `where` names each array for the messages (file, and array in it)."""
    for key in NPZ_KEYS:
        _check_array_header(raw[key].shape, raw[key].dtype, where[key], key.startswith("x"))
    for split in ("train", "test"):
        x, y = raw["x_" + split], raw["y_" + split]
        if len(y) != len(x):
            raise DataFileError(where["y_" + split], f"{len(y)} labels for {len(x)} images "
                                f"in {where['x_' + split]}", "one label per image")
    if raw["x_train"].shape[1:] != raw["x_test"].shape[1:]:
        raise DataFileError(where["x_test"], f"images of shape {raw['x_test'].shape[1:]}, "
                            f"but those of {where['x_train']} are "
                            f"{raw['x_train'].shape[1:]}", "the same image shape in every split")
    total = raw["x_train"].size + raw["x_test"].size
    if total > MAX_VALUES:
        raise DataFileError(where["x_train"], f"{total} pixel values in all splits",
                            f"at most {MAX_VALUES}")
    y_train = raw["y_train"].reshape(-1)
    _first_bad(y_train, (y_train < 0) | (y_train >= max_classes), where["y_train"], "label",
               f"integer labels 0..{max_classes - 1}")
    classes = int(y_train.max()) + 1
    if classes < 2:
        raise DataFileError(where["y_train"], "every label is 0 (one class)",
                            f"labels 0..k-1 with 2 <= k <= {max_classes}")
    y_test = raw["y_test"].reshape(-1)
    _first_bad(y_test, (y_test < 0) | (y_test >= classes), where["y_test"], "label",
               f"labels 0..{classes - 1}, the classes of {where['y_train']}")
    for key in ("x_train", "x_test"):
        x = raw[key]
        if x.dtype.itemsize > 2 or x.dtype.kind == "f":  # smaller integers are always in range
            bad = (x < -MAX_PIXEL) | (x > MAX_PIXEL)
            if x.dtype.kind == "f":
                bad |= ~np.isfinite(x)
            _first_bad(x, bad, where[key], "pixel", f"finite pixel values within ±{MAX_PIXEL:g}")
    return (_images(raw["x_train"]), y_train.astype(np.int64), _images(raw["x_test"]),
            y_test.astype(np.int64))


def _check_array_header(shape: tuple[int, ...], dtype: np.dtype, where: str,
                        images: bool) -> None:
    """What can be checked from an array's shape and dtype alone (before reading it)."""
    if dtype.hasobject:
        raise DataFileError(where, f"an object array ({dtype})", "numeric arrays only; "
                            "object arrays are pickles, which are never loaded")
    kinds = "iuf" if images else "iu"
    if dtype.kind not in kinds or dtype.subdtype is not None:
        raise DataFileError(where, f"dtype {dtype}", "integer or floating-point images"
                            if images else "integer labels (int8..int64, uint8..uint64)")
    n_values = math.prod(shape)
    if n_values > MAX_VALUES:
        raise DataFileError(where, f"shape {tuple(shape)}: {n_values} values",
                            f"at most {MAX_VALUES} values")
    if images:
        ok = len(shape) in (3, 4)
        if ok:
            c, h, w = _chw(tuple(shape))
            ok = c <= MAX_CHANNELS and h <= MAX_SIDE and w <= MAX_SIDE and min(c, h, w) >= 1
        if not ok:
            raise DataFileError(where, f"images of shape {tuple(shape)}", "(N, H, W), "
                                "(N, H, W, C) or (N, C, H, W) with 1 <= H, W <= "
                                f"{MAX_SIDE} and 1 <= C <= {MAX_CHANNELS}")
    elif not (len(shape) == 1 or len(shape) == 2 and shape[1] == 1):
        raise DataFileError(where, f"labels of shape {tuple(shape)}", "shape (N,) or (N, 1)")
    if shape[0] == 0:
        raise DataFileError(where, f"empty (shape {tuple(shape)})", "at least one example")


def _first_bad(a: np.ndarray, bad: np.ndarray, where: str, what: str, allowed: str) -> None:
    """Raise naming the first element of `a` where `bad` holds, if any."""
    if not bad.any():
        return
    at = np.unravel_index(int(np.argmax(bad)), a.shape)
    index = int(at[0]) if len(at) == 1 else tuple(int(i) for i in at)
    raise DataFileError(where, f"{what} {a[at].item()!r} at index {index}", allowed)


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an image batch of shape (N, H, W), (N, H, W, C) or (N, C, H, W)."""
    if len(shape) == 3:
        return 1, shape[1], shape[2]
    if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return shape[3], shape[1], shape[2]
    return shape[1], shape[2], shape[3]


def _images(x: np.ndarray) -> np.ndarray:
    """To float32 (N, C, H, W) in [0, 1]: accepts (N, H, W), (N, H, W, C) or (N, C, H, W)."""
    if x.ndim == 3:
        x = x[:, None]
    elif _chw(x.shape) != x.shape[1:]:
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    hi = float(x.max()) if x.size else 1.0
    return x / 255.0 if hi > 1.5 else x


def _need_file(path: Path, allowed: str) -> None:
    if path.is_dir():
        raise DataFileError(str(path), "a folder, where a file is expected", allowed)
    if path.exists() and not path.is_file():
        raise DataFileError(str(path), "not a regular file (a pipe, socket or device)",
                            allowed)
    if not path.is_file():
        raise DataFileError(str(path), "no such file", allowed)


def _describe(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"an array of dtype {v.dtype} and shape {v.shape}"
    if isinstance(v, list | tuple | dict):
        return f"a {type(v).__name__} of {len(v)} items"
    return f"a {type(v).__name__}"

