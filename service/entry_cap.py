"""A cap on the entries of the Bundles in one request body, checked before decoding.

A 20 MB body ``{"resourceType":"Bundle","entry":[{},{},...]}`` holds 6.5 million entries:
decoded, each is a dict and a plan row, and one request peaked at 1.2 GB (issue 19, 6). No
real patient comes near ``max_bundle_entries`` (default 200,000), so a body past it is
refused with 413 before anything per entry is built. Entries are the elements of every array
that is the value of a member named ``entry``, at any depth: a Parameters' patientData, the
nested Bundles of a batch-response, a CDS prefetch all count. The lean decoder counts while it
scans (``_keyscan.plan``); every other path asks :func:`check` first, which counts the same
way (``_keyscan.entry_count``), so both paths refuse the same bodies with the same message.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.record import InputError

try:  # the compiled scanner (service/_keyscan.c); without it the count follows the decode
    from service import _keyscan
except ImportError:  # pragma: no cover - a build without a C compiler
    _keyscan = None  # type: ignore[assignment]  # the stub types the module; None = not built

DEFAULT_MAX_ENTRIES = 200_000


class TooManyEntries(InputError):
    """The body holds more Bundle entries than the service reads in one request (413)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"the request holds more than {limit} Bundle entries (the service's limit per "
            "request, ELIGIBILITY_MAX_BUNDLE_ENTRIES): split the data"
        )


def check(body: bytes | str, limit: int) -> None:
    """Raise :class:`TooManyEntries` when ``body`` holds more than ``limit`` entries.

    Reads the bytes only (no syntax check: a body that is not JSON is refused later by the
    decoder). Without the compiled scanner the body is decoded and counted instead: slower and
    not bounded, but the byte budget (service.body_budget) still bounds how many run at once.
    """
    raw = body.encode() if isinstance(body, str) else body
    if _keyscan is not None:
        count = _keyscan.entry_count(raw, limit)
    else:  # pragma: no cover - exercised only without the extension
        try:
            count = count_decoded(orjson.loads(raw), limit)
        except orjson.JSONDecodeError:
            return  # the decoder that follows gives the error
    if count > limit:
        raise TooManyEntries(limit)


def count_decoded(value: Any, stop: int) -> int:
    """The entries of a decoded document, counted as ``_keyscan.entry_count`` counts them
    (elements of any array under a member named ``entry``), no further than ``stop`` + 1."""
    count = 0
    stack = [value]
    while stack and count <= stop:
        node = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if key == "entry" and isinstance(item, list):
                    count += len(item)
                stack.append(item)
        elif isinstance(node, list):
            stack.extend(node)
    return count
