"""The error a user can cause by what they write: a spec, a data file, a name or a store URL."""

from __future__ import annotations


class SpecError(ValueError):
    """A study spec is invalid. The message names file, field, value and what is allowed."""
