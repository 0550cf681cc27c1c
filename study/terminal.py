"""Text bound for a terminal: control characters in user strings shown, never obeyed.

A spec's `question`, a file name or a value read back from a store can hold escape
sequences (ESC [ 2 J clears the screen), carriage returns that overwrite a line, bells or
bidirectional overrides that reorder what is shown. :func:`printable` replaces each such
character with a visible escape (``\\x1b``, ``\\r``, ``\\u202e``); newlines and tabs stay.
"""

from __future__ import annotations

import re
import sys

__all__ = ["printable", "say", "short_repr", "short_text"]

# C0 controls but tab and newline, DEL, C1 controls (0x9b is CSI on some terminals), line
# and paragraph separators, bidirectional embeddings/overrides/isolates, lone surrogates
# (undecodable bytes of a file name; printing them to a UTF-8 stream raises).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_SHORT = {"\r": "\\r", "\x0b": "\\v", "\x0c": "\\f"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    return _SHORT.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: object) -> str:
    """`text` as a string with every unsafe character replaced by a visible escape.

    >>> printable("done\\x1b[2J\\r") == "done\\\\x1b[2J\\\\r"
    True
    """
    return _UNSAFE.sub(_escape, str(text))


def short_repr(value: object, most: int = 80) -> str:
    """A value read from a file, for a message: its ASCII repr, cut after `most` characters."""
    s = ascii(value)
    return s if len(s) <= most else s[:most] + "..."


def short_text(text: str, most: int = 120) -> str:
    """Text read from a file, for a message: non-ASCII and control characters escaped, cut
    after `most` characters."""
    s = ascii(text)[1:-1]
    return s if len(s) <= most else s[:most] + "..."


def say(msg: str) -> None:
    """A line for the user on stderr (progress, warnings, errors), made printable."""
    print(printable(msg), file=sys.stderr, flush=True)
