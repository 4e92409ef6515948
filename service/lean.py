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
2. The envelope with ``msgspec``: the top-level members and ``entry`` as a list of raw byte
   slices (``msgspec.Raw``), skipping everything inside at C speed.
3. An entry is left undecoded only when its bytes prove the generic path would ignore it:
   no backslash (no escape can hide a code), no ``"code"`` whose value is a protocol code
   (or is not a plain string), and a typed ``msgspec`` read says it is an Observation with a
   fullUrl of sane length. It becomes a stub Observation without a code, so entry positions
   (named in warnings) and the record builder stay exactly as they are. Every other entry
   is decoded with orjson, as the generic path would.

Anything unusual (not a Bundle object, no ``entry`` array, no proof of unique keys, no
compiled scanner) returns None and the caller takes the generic path, whose answer (result or error)
is then the only one: both paths give the same bytes (tests/test_lean_equivalence.py).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson

from service.inputs import MAX_FULL_URL
from service.protocol import Protocol

try:  # a C extension (service/_keyscan.c), built by pip when a compiler is there
    from service import _keyscan
except ImportError:  # pragma: no cover - then every body takes the generic path
    _keyscan = None


class _Head(msgspec.Struct):
    resourceType: object = None


class _EntryHead(msgspec.Struct):
    fullUrl: object = None
    resource: _Head | None = None


_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENTRIES = msgspec.json.Decoder(list[msgspec.Raw])
_ENTRY_HEAD = msgspec.json.Decoder(_EntryHead)
# A "code" member and the start of its value; only run on slices without a backslash, so a
# '"' always delimits a string token and '"code"' before ':' is a member name.
_CODE_VALUE = re.compile(rb'"code"\s*:\s*("[^"]*"|.)', re.S)
_STUB_RESOURCE = {"resourceType": "Observation"}  # no code: the record builder skips it



def unique_keys(body: bytes) -> bool:
    """True only when no object of ``body`` names a key twice and nothing in it stands
    between msgspec's syntax check and what orjson accepts (a number that overflows a
    double, invalid UTF-8); False when unsure. Syntax itself is checked by the decoders."""
    if _keyscan is None or not _keyscan.proof(body):
        return False
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError:
            return False
    return True


def protocol_code_bytes(protocol: Protocol) -> frozenset[bytes]:
    """The Observation codes of ``protocol`` as they appear in JSON (UTF-8, no escapes)."""
    return frozenset(code.encode() for _, code in protocol.observation_codes())


def _skippable(raw: bytes, codes: frozenset[bytes]) -> bool:
    """Whether the generic path would ignore this entry: an Observation of no protocol code."""
    if b"\\" in raw or b'"Observation"' not in raw:
        return False
    for value in _CODE_VALUE.findall(raw):
        if value == b"{":
            continue  # a CodeableConcept: its codings' codes are matched on their own
        if value[:1] != b'"' or value[1:-1] in codes:
            return False
    try:
        head = _ENTRY_HEAD.decode(raw)
    except msgspec.ValidationError:
        return False
    if head.resource is None or head.resource.resourceType != "Observation":
        return False
    return not (isinstance(head.fullUrl, str) and len(head.fullUrl) > MAX_FULL_URL)


def lean_bundle(body: bytes | str, codes: frozenset[bytes]) -> dict[str, Any] | None:
    """The decoded Bundle with irrelevant Observations as stubs, or None (take the generic
    path). ``codes``: ``protocol_code_bytes(protocol)``."""
    if not isinstance(body, bytes) or not unique_keys(body):
        return None
    try:
        top = _TOP.decode(body)
        if "entry" not in top or orjson.loads(bytes(top.get("resourceType", b"null"))) != "Bundle":
            return None
        raw_entries = _ENTRIES.decode(top["entry"])
    except (msgspec.ValidationError, msgspec.DecodeError, orjson.JSONDecodeError):
        return None
    entries: list[Any] = []
    append = entries.append
    try:
        for raw in raw_entries:
            data = bytes(raw)
            if _skippable(data, codes):
                append({"resource": _STUB_RESOURCE})
            else:
                append(orjson.loads(data))
        return {k: entries if k == "entry" else orjson.loads(bytes(v)) for k, v in top.items()}
    except orjson.JSONDecodeError:  # not expected after the checks; the generic path decides
        return None
