"""Unpickle bytes that may hold plain data and numeric numpy arrays, and nothing else.

A pickle is a program: `pickle.load` calls whatever globals the file names, so a crafted
file runs code. This reader admits dict, list, tuple, str, bytes, int, float, bool, None and
numeric numpy arrays and scalars (what CIFAR-10's python batches hold): every global a file
may name is replaced by a checked function of ours, arrays are built by `numpy.frombuffer`,
and the bytes are scanned first (without building anything) for opcodes that make objects
of arbitrary classes or reach outside the file, and for memo indices past the opcode count
(CPython's unpickler allocates its memo up to the largest index).
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from study.terminal import short_repr, short_text

__all__ = ["REFUSED", "PickledArray", "load"]

# What a refused or malformed pickle raises here (pickle's own errors included).
REFUSED = (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
           KeyError, EOFError, OverflowError, MemoryError, RecursionError)


MAX_ARRAY_VALUES = 2**30  # values in one array: 4 GiB as float32


def load(raw: bytes, *, max_ops: int) -> Any:
    """The object `raw` pickles, if it is plain data of at most `max_ops` opcodes (arrays of
    at most MAX_ARRAY_VALUES values). Raises one of REFUSED otherwise."""
    _scan_pickle(raw, max_ops)
    return _PlainUnpickler(io.BytesIO(raw), encoding="bytes").load()


# Opcodes that build objects of a class named in the file, or reach outside it.
_REFUSED_OPS = frozenset({"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "INST", "OBJ",
                          "NEWOBJ", "NEWOBJ_EX", "NEXT_BUFFER", "READONLY_BUFFER"})


def _scan_pickle(raw: bytes, max_ops: int) -> None:
    for ops, (op, arg, pos) in enumerate(pickletools.genops(raw), start=1):
        if ops > max_ops:
            raise pickle.UnpicklingError(f"more than {max_ops} pickle opcodes")
        if op.name in _REFUSED_OPS:
            raise pickle.UnpicklingError(f"opcode {op.name} at byte {pos} is refused")
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > ops:
            raise pickle.UnpicklingError(f"memo index {arg} at byte {pos} exceeds the "
                                         f"{ops} opcodes before it")


class _Global:
    """What a global named in a pickle stands for: `fn`, if not None, is what calling it does.
    A pickle can neither change it (no attributes) nor give it a state (BUILD)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any] | None) -> None:
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        if self.fn is None:
            raise pickle.UnpicklingError("a pickle calls numpy.ndarray, which numpy never writes")
        return self.fn(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError("a pickle sets an attribute of a global")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle gives a global a state")


_NDARRAY = _Global(None)  # numpy.ndarray: only an argument of _reconstruct
_DTYPE_CODE = re.compile(r"[<>|=]?[biuf][1248]")


class _PickledDtype:
    """A numeric dtype named in a pickle; BUILD gives its byte order."""

    def __init__(self, code: str) -> None:
        self.code, self.order = code, "="

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and _text(state[1]) in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)):
            raise pickle.UnpicklingError(f"dtype state {short_repr(state)} is not that of a plain "
                                         "numeric dtype")
        self.order = _text(state[1])

    def real(self) -> np.dtype:
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


class PickledArray:
    """An array named in a pickle, built by numpy.frombuffer from its checked state."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an array state that numpy does not write")
        shape, dtype, fortran, data = state[-4:]  # (version,) shape, dtype, fortran, data
        self.array = _array(data, dtype, shape, "F" if fortran else "C")


def _array(data: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(dtype, _PickledDtype):
        raise pickle.UnpicklingError(f"array dtype {_describe(dtype)}")
    if not (isinstance(shape, tuple) and len(shape) <= 8
            and all(type(d) is int and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"array shape {short_repr(shape)}")
    if math.prod(shape) > MAX_ARRAY_VALUES:
        raise pickle.UnpicklingError(f"array shape {shape}: over {MAX_ARRAY_VALUES} values")
    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError(f"array data {_describe(data)}")
    dt = dtype.real()
    if len(data) != math.prod(shape) * dt.itemsize:
        raise pickle.UnpicklingError(f"{len(data)} bytes of data for an array of shape "
                                     f"{shape} and dtype {dt}")
    return np.frombuffer(data, dtype=dt).reshape(shape, order=order)


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> PickledArray:
    if subtype is not _NDARRAY or shape != (0,) or typecode not in ("b", b"b"):
        raise pickle.UnpicklingError("_reconstruct with arguments numpy does not write")
    return PickledArray()


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> PickledArray:
    if _text(order) not in ("C", "F"):
        raise pickle.UnpicklingError(f"array order {short_repr(order)}")
    held = PickledArray()
    held.array = _array(data, dtype, shape, _text(order))
    return held


def _dtype(code: Any, align: Any = False, copy: Any = False) -> _PickledDtype:
    text = _text(code)
    if not _DTYPE_CODE.fullmatch(text):
        raise pickle.UnpicklingError(f"dtype {short_repr(code)} (numeric dtypes only: b, i, u, f)")
    return _PickledDtype(text)


def _scalar(dtype: Any, data: Any) -> bool | int | float:
    if not isinstance(dtype, _PickledDtype) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("scalar with arguments numpy does not write")
    return _array(data, dtype, (1,), "C")[0].item()


def _latin1(text: Any, encoding: Any) -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode with arguments pickle does not write")
    return text.encode("latin1")


# Every global a pickle may name, and what it gets instead: numpy's array pickles need
# _reconstruct, ndarray and dtype (protocols 0-4), _frombuffer and dtype (protocol 5),
# scalar for numpy scalars, and _codecs.encode for bytes in protocols 0-2 written by Python 3.
# `numpy.core` is the name pickles written by numpy 1.x use (the real CIFAR-10 files).
_ADMITTED: dict[tuple[str, str], _Global] = {
    ("numpy._core.multiarray", "_reconstruct"): _Global(_reconstruct),
    ("numpy.core.multiarray", "_reconstruct"): _Global(_reconstruct),
    ("numpy._core.numeric", "_frombuffer"): _Global(_frombuffer),
    ("numpy.core.numeric", "_frombuffer"): _Global(_frombuffer),
    ("numpy._core.multiarray", "scalar"): _Global(_scalar),
    ("numpy.core.multiarray", "scalar"): _Global(_scalar),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global(_dtype),
    ("_codecs", "encode"): _Global(_latin1),
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> _Global:
        found = _ADMITTED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"it names {short_text(module, 60)}.{short_text(name, 60)}, which this reader "
                "refuses (it loads plain data and numpy arrays only, and runs no code from a file)")
        return found


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("latin1")
    if isinstance(v, str):
        return v
    raise pickle.UnpicklingError(f"expected a string, found {_describe(v)}")


def _describe(v: Any) -> str:
    return f"a {type(v).__name__}"

