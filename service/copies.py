"""Whether two decoded resources are copies of one content (a searchset's ``match`` and
``include`` entry, a resource two searches of a batch both returned).

Python's ``==`` is not enough: it holds ``1 == 1.0 == True``, and in FHIR ``1.0`` and ``1``
are different decimals and ``true`` is not a number. Canonical JSON (keys sorted) is the
comparison; ``==`` runs first because it rules out almost every different pair at once.
"""

from __future__ import annotations

from typing import Any

import orjson


def _canonical(value: Any) -> bytes | None:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # not JSON data: never called a copy
        return None


def identical(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` serialise to the same canonical JSON."""
    if a is b:
        return True
    if a != b:
        return False
    left = _canonical(a)
    return left is not None and left == _canonical(b)
