"""Storage URIs: plain local paths, ``file://`` URIs and ``s3://bucket/key``.

Parsing is strict: a malformed or unsupported URI raises ``ValueError`` naming the URI and saying what was
expected, so a typo in a config fails at the first use rather than as an odd "not found" later.
``file://`` paths are taken verbatim (no percent-decoding), as fsspec does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# A scheme with a broken separator ("s3:/b/k", "s3:b/k") would otherwise read as a relative local path.
_BROKEN_SCHEME_RE = re.compile(r"^(?:s3a?:|file:|[A-Za-z][A-Za-z0-9+.-]+:/)", re.IGNORECASE)
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html (the common subset)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_EXPECTED = "a local path, file:///absolute/path or s3://<bucket>/<key>"


@dataclass(frozen=True)
class Location:
    """A parsed URI. ``path`` is the local filesystem path, or ``bucket/key`` (``bucket`` alone) for S3."""

    uri: str
    scheme: Literal["file", "s3"]
    path: str
    bucket: str = ""
    key: str = ""

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"


def parse_uri(uri: str, *, need_key: bool = False) -> Location:
    """Parse ``uri``; ``need_key`` demands an object key for S3 (a bucket alone names no file)."""
    if not isinstance(uri, str):
        raise TypeError(f"storage URI must be a str, got {type(uri).__name__}: {uri!r}")
    if not uri:
        raise ValueError(f"empty storage URI; expected {_EXPECTED}")
    m = _SCHEME_RE.match(uri)
    if m is None:
        if _BROKEN_SCHEME_RE.match(uri):
            raise ValueError(
                f"malformed URI {uri!r}: the scheme must be followed by '://'; expected {_EXPECTED}"
            )
        return Location(uri=uri, scheme="file", path=uri)
    scheme = m.group(1).lower()
    rest = uri[m.end() :]
    if scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest.startswith("/"):
            raise ValueError(f"malformed file URI {uri!r}: expected file:///absolute/path (three slashes)")
        return Location(uri=uri, scheme="file", path=rest)
    if scheme != "s3":
        raise ValueError(f"unsupported URI scheme {scheme!r} in {uri!r}; expected {_EXPECTED}")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"malformed S3 URI {uri!r}: missing bucket; expected s3://<bucket>/<key>")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(
            f"malformed S3 URI {uri!r}: {bucket!r} is not a valid bucket name; expected 3-63 characters of "
            "lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
        )
    key = key.rstrip("/")
    if "//" in key or key.startswith("/"):
        raise ValueError(f"malformed S3 URI {uri!r}: empty path segment ('//') in the key")
    if need_key and not key:
        raise ValueError(f"S3 URI {uri!r} names a bucket only; expected s3://<bucket>/<key>")
    return Location(uri=uri, scheme="s3", path=f"{bucket}/{key}" if key else bucket, bucket=bucket, key=key)


def is_remote(uri: str) -> bool:
    """True for ``s3://`` URIs, False for local paths and ``file://`` URIs; ValueError if malformed."""
    return parse_uri(uri).is_s3


def join(base_uri: str, *parts: str) -> str:
    """Append relative ``parts`` to ``base_uri`` with '/'; leading and trailing slashes of parts are dropped.

    ``join("s3://b/runs", "x", "y.json") == "s3://b/runs/x/y.json"``; empty parts are skipped. Unlike
    ``os.path.join``, a part starting with '/' does not restart the path.
    """
    parse_uri(base_uri)
    out = base_uri
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"join: parts must be str, got {type(part).__name__}: {part!r}")
        piece = part.strip("/")
        if not piece:
            continue
        out = (out if out.endswith("/") else out + "/") + piece
    return out
