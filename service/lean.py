"""Decode only what the protocol reads: a Bundle whose irrelevant Observations stay bytes.

Most of a large export is Observations no criterion looks at. The generic path
(``strict_json.loads``) turns every field of every one into Python objects, re-encodes the
whole document for its duplicate-key proof, and frees it all again. Here one pass of a small
C scanner (``service/_keyscan.c``, about 1.2 GB/s with SSE2) does three things at once:

1. Syntax, as orjson accepts it or stricter: structure, strings (no raw control characters,
   valid escapes, surrogate escapes only in pairs), numbers, literals. Anything the scanner
   is unsure of (a number that could overflow a double, nesting past 512 levels) counts as
   refused. UTF-8 is checked apart (``bytes.isascii`` first, else a decode).
2. Unique keys, for every object of the document (skipped entries too): each object's
   member names are compared as bytes; a name with a backslash (an escape could spell
   another name) makes it unsure. jiter's ``catch_duplicate_keys`` was measured first: it
   builds the whole document and cost 1.4-1.6x orjson.loads on its own (manual: lean decoder).
3. The plan: which elements of the top-level ``entry`` array to decode, by following the few
   paths that decide (``resource.resourceType``, ``resource.code.coding[].code``,
   ``resource.component[].code.coding[].code``, ``fullUrl``). An entry is left out only when
   its resource is an Observation with no ``contained`` resources (a panel's contained
   members are results: service.contained) none of whose codes is a protocol code, every such code a
   plain string, every container on those paths of the expected type, and its fullUrl a
   short plain string. Every other entry is decoded with orjson, as the generic path would;
   ``LeanBundle.positions`` keeps their original indexes, so warnings and errors name the
   same entry.

Anything unusual (not a Bundle object, no ``entry`` array, an entry that is not an object,
a refused or unsure document, no compiled scanner) returns None and the caller takes the
generic path, whose answer (result or error) is then the only one: both paths give the same
bytes (tests/test_lean_equivalence.py); the scanner is checked against orjson, ``json`` and
a Python reading of the entries on corrupted real Bundles (tests/test_keyscan.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from service.entry_cap import TooManyEntries
from service.inputs import MAX_FULL_URL
from service.protocol import Protocol

try:  # a C extension (service/_keyscan.c), built by pip when a compiler is there
    from service import _keyscan
except ImportError:  # pragma: no cover - then every body takes the generic path
    _keyscan = None  # type: ignore[assignment]  # the stub types the module; None = not built


class LeanBundle(dict):
    """A decoded Bundle as the record builder reads it (``resourceType`` and ``entry``),
    ``entry`` holding only the entries decoded; ``positions`` gives each one's index in the
    original ``entry`` array (named in warnings and errors)."""

    positions: list[int]
    body: bytes

    def skipped(self) -> Iterator[Any]:
        """The entries left out, decoded one at a time. Rarely read: the record builder asks
        only when the Patient names no server and it must know every server the data names
        (service.record._one_server), as the generic path sees them all."""
        kept = set(self.positions)
        spans = _keyscan.entry_spans(self.body) if _keyscan is not None else None
        if spans is None:  # not expected (the plan proved the same body): decode it all
            entries = orjson.loads(self.body)["entry"]
            yield from (e for n, e in enumerate(entries) if n not in kept)
            return
        view = memoryview(self.body)
        for n in range(len(spans) // 2):
            if n not in kept:
                yield orjson.loads(view[spans[2 * n] : spans[2 * n + 1]])


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
    another system only costs a decode: the record builder then compares system and code);
    the same selection as every other path (service.relevance)."""
    return protocol.relevance.lean_codes


def lean_bundle(
    body: bytes | str, codes: tuple[bytes, ...], max_entries: int = -1
) -> LeanBundle | None:
    """The decoded Bundle without the Observations no protocol code can match, or None
    (take the generic path). ``codes``: ``protocol_codes(protocol)``. More than
    ``max_entries`` entries (-1: no cap) raise ``TooManyEntries`` (service.entry_cap): the
    scan stops there, before any plan row is built."""
    if not isinstance(body, bytes) or _keyscan is None:
        return None
    # The proof of unique keys, and [position, start, end, ...] of the entries to decode.
    try:
        plan = _keyscan.plan(body, codes, MAX_FULL_URL, max_entries)
    except _keyscan.TooManyEntries:
        raise TooManyEntries(max_entries) from None
    if plan is None or not _utf8(body):
        return None
    view = memoryview(body)
    try:
        entries = [orjson.loads(view[plan[k + 1] : plan[k + 2]]) for k in range(0, len(plan), 3)]
    except orjson.JSONDecodeError:  # not expected after the checks; the generic path decides
        return None
    bundle = LeanBundle(resourceType="Bundle", entry=entries)
    bundle.positions = plan[::3]
    bundle.body = body
    return bundle
