"""Reading a spec file's YAML with bounds: size, encoding, nesting, no aliases.

PyYAML alone lets a few hundred bytes of anchors and aliases (a "billion laughs") expand
to gigabytes and raises tracebacks on undecodable bytes; a plain read of a FIFO hangs.
Here every such input is refused with an :class:`UnsafeYaml` whose message says what is
wrong and what is allowed (without the file name: the caller adds it). Explicit tags
(`!!timestamp x` crashes PyYAML's constructor) are refused too. No torch, Ray, Optuna or MLflow.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Any

import yaml

__all__ = ["MAX_BYTES", "MAX_NESTING", "UnsafeYaml", "parse", "read_bounded"]

MAX_BYTES = 1 << 20  # 1 MiB: a spec is a page of settings (the bundled ones are under 3 KB)
MAX_NESTING = 16  # levels of mappings/lists: the deepest spec field (space.k.when.k) needs 4


class UnsafeYaml(ValueError):
    """A spec file or text is refused; the message names the problem and what is allowed."""


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and explicit tags as they are read (before
    anything is expanded or constructed), bounds nesting, and reads YAML 1.2 floats such as
    1e-3 as numbers."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.nesting = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise UnsafeYaml(
                f"YAML anchor or alias `{event.anchor}` at line {mark.line + 1}, column "
                f"{mark.column + 1}. Allowed: plain values only (no &anchors, *aliases or "
                "<<: merges; they can expand a small file into gigabytes): write each value "
                "out")
        if getattr(event, "tag", None) not in (None, "!"):
            mark = event.start_mark
            raise UnsafeYaml(
                f"YAML tag `{event.tag}` at line {mark.line + 1}, column {mark.column + 1}. "
                "Allowed: plain values only (no !!tags: write the value, quoted if it must "
                "stay text)")
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            mark = event.start_mark
            raise UnsafeYaml(f"nested deeper than {MAX_NESTING} levels at line "
                             f"{mark.line + 1}. Allowed: at most {MAX_NESTING} levels of "
                             "mappings and lists")
        try:
            return super().compose_node(parent, index)
        finally:
            self.nesting -= 1


# YAML 1.1 (PyYAML) reads 1e-3, 5e+2, 1E3 and -.5 as strings: read them as floats, as
# YAML 1.2 and Python do. Tried after PyYAML's own resolvers (int, float, ...).
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+"
                       r"|\.[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9][0-9_]*)$")
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12,
                                  list("-+.0123456789"))


def parse(data: bytes | str) -> Any:
    """The YAML document in `data` (UTF-8 bytes or text), or :class:`UnsafeYaml`."""
    if len(data) > MAX_BYTES:
        raise UnsafeYaml(f"{len(data)} bytes. Allowed: at most {MAX_BYTES} bytes")
    text = _decode(data) if isinstance(data, bytes) else data
    loader = None
    try:
        loader = _SpecLoader(text)
        return loader.get_single_data()
    except UnsafeYaml:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise UnsafeYaml(f"not valid YAML{where}: {what}") from None
    except yaml.YAMLError as e:  # e.g. a ReaderError: a control character in the file
        raise UnsafeYaml(f"not valid YAML: {' '.join(str(e).split())}") from None
    except ValueError as e:  # PyYAML's int(): an integer of more than 4300 digits
        raise UnsafeYaml(f"not a usable value: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UnsafeYaml(f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
                         f"(line {line}). Allowed: a UTF-8 text file (save it as UTF-8)"
                         ) from None


def read_bounded(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file of at most MAX_BYTES.

    Raises FileNotFoundError when there is no such file, UnsafeYaml for anything else
    (a folder, a FIFO or device, a name too long, no permission, too big)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO: no hang
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or 0, "error")
        raise UnsafeYaml(f"cannot open the spec file ({reason}). Allowed: a readable YAML "
                         "file with a path the system accepts") from None
    except ValueError as e:  # an embedded NUL byte
        raise UnsafeYaml(f"cannot open the spec file ({e}). Allowed: a path without "
                         "NUL bytes") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UnsafeYaml("is a folder. Allowed: a YAML spec file")
        if not stat.S_ISREG(mode):
            raise UnsafeYaml("not a regular file (a pipe or device). Allowed: a YAML spec "
                             "file")
        data = _read_at_most(fd, MAX_BYTES + 1)
    except OSError as e:
        raise UnsafeYaml(f"cannot read the spec file ({e.strerror}). Allowed: a readable "
                         "YAML file") from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise UnsafeYaml(f"larger than {MAX_BYTES} bytes. Allowed: a spec of at most "
                         f"{MAX_BYTES} bytes (1 MiB)")
    return data


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
