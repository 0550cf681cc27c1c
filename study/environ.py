"""Temporary defaults in the process environment (settings libraries read from it)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

__all__ = ["defaults"]


@contextlib.contextmanager
def defaults(values: Mapping[str, str]) -> Iterator[None]:
    """Set the variables of `values` that the environment does not set already (a setting
    of the user's wins); remove them again on exit."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)
