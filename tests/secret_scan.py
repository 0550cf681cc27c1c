"""Find secrets where they must not be: every file under some folders, and captured output.

Reusable by any test that runs the project with a credential in its configuration (SQLite
with a ``?password=``, a PostgreSQL URL, an authenticated MLflow server, AWS_* variables):

    session = ray_local.address_info["session_dir"]  # the ray_local fixture's instance
    leaks = find_secrets([PASSWORD, AWS_KEY], folders=[workdir, session],
                         texts={"stdout": out, "stderr": err})
    assert not leaks, leaks
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

__all__ = ["basic_auth_form", "find_secrets", "forms"]


def forms(secret: str) -> set[bytes]:
    """The byte strings a secret can appear as: plain, percent-encoded, UTF-16 (SQLite can
    store text so) and its repr with escapes; with `user`, also as an HTTP basic-auth
    header's base64."""
    out = {secret.encode(), quote(secret, safe="").encode(), secret.encode("utf-16-le"),
           repr(secret)[1:-1].encode()}
    return {f for f in out if len(f) >= 6}


def basic_auth_form(user: str, password: str) -> str:
    """How `user`:`password` travels in an HTTP Authorization header (pass it as a secret)."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _files(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not Path(root, d).is_symlink()]
        for name in files:
            path = Path(root, name)
            if path.is_file() and not path.is_symlink():
                yield path


def find_secrets(secrets: Iterable[str], *, folders: Iterable[str | Path] = (),
                 texts: Mapping[str, str | bytes] | None = None) -> list[str]:
    """'WHERE: SECRET-FORM' for every file under `folders` (all of them, binary ones too:
    SQLite stores, pickles, logs) and every named text holding any form of any secret."""
    patterns = {(s, f) for s in secrets for f in forms(s)}
    leaks: list[str] = []
    sources: list[tuple[str, bytes]] = [
        (name, t.encode() if isinstance(t, str) else t) for name, t in (texts or {}).items()]
    for folder in folders:
        for path in _files(Path(folder)):
            try:
                data = path.read_bytes()
            except OSError as e:  # unreadable is not clean: say so
                leaks.append(f"{path}: unreadable ({e})")
                continue
            sources.append((str(path), data))
    for where, data in sources:
        for secret, form in patterns:
            if form in data:
                leaks.append(f"{where}: {secret[:3]}... as {form[:12]!r}")
    return leaks
