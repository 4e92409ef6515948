"""The upper limit a laboratory wrote as ``referenceRange.text`` ("0-33 U/L", "< 40").

Many exports carry the normal range only as text, with no ``high``. That text is the lab's
own limit, so it must be read rather than replaced by the protocol's default ULN; a text
that is not one of the few plain forms below is *not* guessed at (the caller makes the
criterion undetermined and quotes it). Forms read:

- ``low - high`` (hyphen, en or em dash, ``to``, ``..``), e.g. ``0-33``, ``10 – 40 U/L``;
- ``< high``, ``<= high``, ``≤ high``, ``up to high``, ``less than high``;

each with an optional unit after the number(s) and a decimal point or comma. A lower bound
only (``> 10``), words ("normal", "see report") or anything else is unreadable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_MAX_LENGTH = 64  # a range text is short; longer text is prose, not a range
_NUM = r"(\d{1,6}(?:[.,]\d{1,6})?)"
_UNIT = r"([A-Za-zµμ\[%/][^\s]*)"
_RANGE = re.compile(
    rf"{_NUM}\s*(?:{_UNIT}\s*)?(?:-|–|—|\.\.|to)\s*{_NUM}\s*(?:{_UNIT})?", re.IGNORECASE
)
_UPPER = re.compile(rf"(?:<=|=<|≤|<|up\s*to|less\s+than)\s*{_NUM}\s*(?:{_UNIT})?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class TextLimit:
    """An upper limit read from text; ``unit`` None when the text names none."""

    value: float
    unit: str | None


def _number(text: str) -> float | None:
    value = float(text.replace(",", "."))
    return value if math.isfinite(value) else None


def read_upper(text: object) -> TextLimit | None:
    """The upper limit ``text`` states, or None when it is not a form we can read."""
    if not isinstance(text, str) or len(text) > _MAX_LENGTH:
        return None
    text = text.strip()
    if m := _RANGE.fullmatch(text):
        low, low_unit, high, high_unit = m.groups()
        if low_unit and high_unit and low_unit != high_unit:
            return None  # two different units: not a plain range
        low_value, high_value = _number(low), _number(high)
        if low_value is None or high_value is None or low_value > high_value:
            return None
        return TextLimit(high_value, high_unit or low_unit)
    if m := _UPPER.fullmatch(text):
        value = _number(m.group(1))
        return None if value is None else TextLimit(value, m.group(2))
    return None


def quoted(text: object) -> str:
    """The text as written, quoted (and cut short) for a note."""
    shown = text.strip() if isinstance(text, str) else repr(text)
    return f'"{shown[:60]}…"' if len(shown) > 60 else f'"{shown}"'
