"""Secrets out of everything the project prints, logs, tags, pickles or writes.

One path for every URI and credential: :func:`redact_uri` masks the password of a database
URL (SQLAlchemy's own rendering), the user info of any other URL and the value of every
password-like query key; :func:`redact_tree` does the same to the strings of a spec's raw
mapping; :func:`redact_spec` gives the copy of a spec that may be pickled or written.
:func:`split_http_credentials` moves ``user:pw@`` out of an HTTP tracking URI into MLflow's
own variables. :func:`is_credential_var` names the environment variables that are secrets.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from study.spec import StudySpec

__all__ = ["MASK", "credential_vars", "is_credential_var", "is_redacted", "redact_spec",
           "redact_text", "redact_tree", "redact_uri", "split_http_credentials", "usable_uri",
           "use_http_credentials"]

MASK = "***"

# Query keys whose value is a secret (compared lower-case, also as a suffix: db_password).
SECRET_QUERY_KEYS = ("password", "passwd", "pass", "pwd", "token", "secret", "key",
                     "apikey", "api_key", "access_key", "auth", "credential", "credentials",
                     "signature", "sig", "session")

# Environment variable names that hold credentials: AWS_* and any name with one of these
# words in it (upper-case).
CREDENTIAL_VAR_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL",
                        "AUTH", "SESSION")
CREDENTIAL_VAR_PREFIXES = ("AWS_",)

_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`<>]+")
_HTTP = ("http", "https")


def _secret_key(key: str) -> bool:
    k = key.lower()
    return any(k == s or k.endswith(("_" + s, "-" + s)) for s in SECRET_QUERY_KEYS)


def redact_uri(uri: str) -> str:
    """The URI with its password, user info (non-database URLs) and secret query values
    replaced by ``***``; a URI without any comes back unchanged."""
    if "://" not in uri:
        return uri
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in (*_HTTP, "s3", "gs", "file"):
        redacted = _redact_database_url(uri)
        if redacted is not None:
            return redacted
    return _redact_generic(uri)


def _redact_database_url(uri: str) -> str | None:
    """SQLAlchemy's own masking of a database URL, plus secret query values; None if
    SQLAlchemy cannot parse it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except (ArgumentError, ValueError):
        return None
    secret_query = [k for k in url.query if _secret_key(k)]
    if url.password is None and not secret_query:
        return uri  # as given: SQLAlchemy would re-encode harmless characters
    if secret_query:
        url = url.update_query_dict({k: MASK for k in secret_query})
    # SQLAlchemy percent-encodes the mask in a query value: keep it readable
    return url.render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)


def _redact_generic(uri: str) -> str:
    """User info (user:pw@ -> ***@) and secret query values of any other URL masked."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return _redact_unparsable(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_key(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _secret_key(k) else v) for k, v in pairs],
                              safe="*")
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_unparsable(uri: str) -> str:
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{MASK}@{rest.rsplit('@', 1)[1]}" if "@" in rest else \
        f"{scheme}://{MASK}"


def is_redacted(uri: str) -> bool:
    """Does this (stored) URI have a masked secret, so it cannot be used as it is?"""
    return MASK in uri


def redact_text(text: str) -> str:
    """Every URI inside a message or a line of text redacted."""
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


def redact_tree(value: Any) -> Any:
    """A copy of a YAML-like tree (mappings, lists, scalars) with every string redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v) for v in value]
    return value


def redact_spec(spec: StudySpec) -> StudySpec:
    """The spec with its store URIs and raw YAML redacted: what may be pickled or written."""
    return dataclasses.replace(spec, optuna_storage=redact_uri(spec.optuna_storage),
                               tracking_uri=redact_uri(spec.tracking_uri),
                               results_dir=redact_uri(spec.results_dir),
                               raw=redact_tree(dict(spec.raw)))


def split_http_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http(s)://user:pw@host/...`` -> (``http(s)://host/...``, user, pw); any other URI
    comes back as it is with (None, None)."""
    if not uri.lower().startswith(("http://", "https://")):
        return uri, None, None
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    from urllib.parse import unquote

    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, unquote(user) or None, unquote(password) if password else None


def use_http_credentials(uri: str) -> str:
    """Move ``user:pw@`` of an HTTP(S) tracking URI into MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD for this process (MLflow reads basic-auth credentials there,
    not from the URL) and return the URI without them."""
    clean, user, password = split_http_credentials(uri)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return clean


def is_credential_var(name: str) -> bool:
    """Does this environment variable name hold a credential?"""
    upper = name.upper()
    return upper.startswith(CREDENTIAL_VAR_PREFIXES) or any(
        w in upper for w in CREDENTIAL_VAR_WORDS)


def credential_vars(names: Any) -> set[str]:
    """The credential variable names among `names`."""
    return {n for n in names if is_credential_var(n)}


def usable_uri(stored: str, candidates: Sequence[tuple[str, str | None]], *, what: str,
               explicit: tuple[str, str | None] = ("", None)) -> str:
    """The URI to open a store whose copy was stored as `stored` (perhaps redacted).

    `explicit` (where, value), e.g. a command-line flag, wins when given. A stored copy
    without a masked secret is used as it is. Otherwise the first of `candidates`
    (where, value: the environment, a spec file) whose redacted form is the stored copy.
    SpecError names what to give when none fits."""
    from study.spec import SpecError

    if explicit[1]:
        return explicit[1]
    if stored and not is_redacted(stored):
        return stored
    for _, value in candidates:
        if value and (not stored or redact_uri(value) == stored):
            return value
    sources = ", ".join(w for w in (explicit[0], *(w for w, _ in candidates)) if w)
    raise SpecError(f"{what} is stored without its secret as {stored!r}: give the full URI "
                    f"with {sources}.")
