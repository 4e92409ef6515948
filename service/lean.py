"""Decode only what the protocol reads: a Bundle whose irrelevant Observations stay bytes.

Most of a large export is Observations no criterion looks at. The generic path
(``strict_json.loads``) turns every field of every one into Python objects, re-encodes the
whole document for its duplicate-key proof, and frees it all again. Here:

1. Unique keys, for every object of the document (skipped entries too): one pass of a small
   C scanner (``service/_keyscan.c``, about 1 GB/s) compares each object's member names as
   bytes; a name with a backslash (an escape could spell another name), a number that may
   overflow a double (msgspec skips it, orjson refuses it) or nesting past 512 levels makes
   it unsure, and unsure means the generic path. Invalid UTF-8 likewise. jiter's
   ``catch_duplicate_keys`` was measured first: it builds the whole document and cost
   1.4-1.6x orjson.loads on its own (docs-perf.md).
   The same pass notes where each element of the top-level ``entry`` array starts and ends.
2. The envelope with ``msgspec``: ``resourceType`` and ``entry`` as typed heads
   (``_EntryHead``: fullUrl, resourceType, code, component; every other field and every
   other member skipped at C speed).
3. An entry is left out only when its head proves the record builder would ignore it: an
   Observation whose code and components carry no protocol code (any odd shape: decoded)
   and whose fullUrl passes the envelope check. Every other entry is decoded with orjson,
   as the generic path would; ``LeanBundle.positions`` keeps their original indexes, so
   warnings and errors name the same entry.

Anything unusual (not a Bundle object, no ``entry`` array, an entry that is not an object,
no proof of unique keys, no compiled scanner) returns None and the caller takes the generic
path, whose answer (result or error) is then the only one: both paths give the same bytes
(tests/test_lean_equivalence.py).
"""

from __future__ import annotations

import orjson

from service.inputs import MAX_FULL_URL
from service.protocol import Protocol

try:  # a C extension (service/_keyscan.c), built by pip when a compiler is there
    from service import _keyscan
except ImportError:  # pragma: no cover - then every body takes the generic path
    _keyscan = None


class LeanBundle(dict):
    """A decoded Bundle as the record builder reads it (``resourceType`` and ``entry``),
    ``entry`` holding only the entries decoded; ``positions`` gives each one's index in the
    original ``entry`` array (named in warnings and errors)."""

    positions: list[int]


def available() -> bool:
    """Whether the compiled scanner is there (else every body takes the generic path)."""
    return _keyscan is not None


def _utf8(body: bytes) -> bool:
    if body.isascii():
        return True
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def unique_keys(body: bytes) -> bool:
    """True only when no object of ``body`` names a key twice and nothing in it stands
    between msgspec's syntax check and what orjson accepts (a number that overflows a
    double, invalid UTF-8); False when unsure. Syntax itself is checked by the decoders."""
    return _keyscan is not None and _keyscan.proof(body) and _utf8(body)


def protocol_codes(protocol: Protocol) -> tuple[bytes, ...]:
    """The Observation codes of ``protocol`` as UTF-8, whatever their system (a code of
    another system only costs a decode: the record builder then compares system and code)."""
    return tuple(sorted({code.encode() for _, code in protocol.observation_codes()}))


def lean_bundle(body: bytes | str, codes: tuple[bytes, ...]) -> LeanBundle | None:
    """The decoded Bundle without the Observations no protocol code can match, or None
    (take the generic path). ``codes``: ``protocol_codes(protocol)``."""
    if not isinstance(body, bytes) or _keyscan is None:
        return None
    # The proof of unique keys, and [position, start, end, ...] of the entries to decode.
    plan = _keyscan.plan(body, codes, MAX_FULL_URL)
    if plan is None or not _utf8(body):
        return None
    view = memoryview(body)
    try:
        entries = [orjson.loads(view[plan[k + 1] : plan[k + 2]]) for k in range(0, len(plan), 3)]
    except orjson.JSONDecodeError:  # not expected after the checks; the generic path decides
        return None
    bundle = LeanBundle(resourceType="Bundle", entry=entries)
    bundle.positions = plan[::3]
    return bundle
