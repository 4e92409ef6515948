"""JSON with one meaning: an object that names the same key twice is refused.

RFC 8259 leaves duplicate names undefined; orjson keeps the last value, other parsers keep the
first. A validator in front of us and our engine could then read two different birthDates
from one document. So we refuse such documents, without giving up orjson's speed:

1. ``orjson.loads`` decodes (and rejects anything that is not JSON).
2. A proof that no key was dropped. Compact input that ``orjson.dumps`` reproduces byte for
   byte lost nothing. Otherwise, from two C-speed byte counts: In valid JSON a ':' outside
   strings separates a member's name from its value, and a ':' inside a string is a raw ':'
   byte or the escape ``\\u003a``. If the document holds no such escape:
   ``input.count(':') = members + colons inside strings``, and the same holds for
   ``orjson.dumps(decoded)``. A duplicate key drops at least one member (and maybe strings
   with colons) and nothing can add one, so the counts are equal if and only if no key was
   dropped.
3. Only when that proof is not available (a ``\\u003a`` escape, or a document too deep to
   re-encode) or fails (to name the key), the standard library decodes the document again
   with an ``object_pairs_hook`` that sees every pair.

Cost: one ``orjson.dumps`` and a ``memcmp`` (compact input), else two ``bytes.count`` and a
backslash search; figures in ``tests/test_strict_json.py``'s docstring.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from service.errors import InputError

_ESCAPED_COLON = re.compile(rb"\\u003[aA]")
_KEY_NAME = re.compile(r"[A-Za-z0-9_\-.]{1,40}")

JSONDecodeError = orjson.JSONDecodeError


class DuplicateKeyError(InputError):
    """An object in the document names ``key`` more than once (``key`` may be None)."""

    def __init__(self, key: str | None) -> None:
        self.key = key
        named = f"the key '{key}'" if key is not None else "a key"
        super().__init__(f"ambiguous JSON: an object names {named} more than once")


class TooDeepError(InputError):
    """Nested deeper than the standard library's decoder can check."""


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """``orjson.loads``, refusing duplicate keys (``DuplicateKeyError``)."""
    value = orjson.loads(data)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if b":" not in raw:
        return value  # no object has a member
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:  # deeper than orjson re-encodes: check the slow way
        encoded = None
    if encoded is not None:
        if encoded == raw:
            return value  # compact input re-encodes to itself: nothing was dropped
        # memchr for a backslash is nearly free; most documents have none, so no escapes
        no_escaped_colon = b"\\" not in raw or _ESCAPED_COLON.search(raw) is None
        if no_escaped_colon and encoded.count(b":") == raw.count(b":"):
            return value
    _check_pairs(raw)  # raises DuplicateKeyError, naming the key
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key if _KEY_NAME.fullmatch(key) else None)
            seen.add(key)
    return obj


def _check_pairs(raw: bytes) -> None:
    try:
        json.loads(raw, object_pairs_hook=_unique)
    except RecursionError:
        raise TooDeepError("the JSON document is nested too deeply to be checked") from None
