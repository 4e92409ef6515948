"""Which of a result's reference ranges is this patient's upper limit of normal.

A laboratory often reports several ranges: by sex (``appliesTo``), by age (``age``), or of
another kind (``type`` therapeutic, recommended, ...). Only a normal range (``type`` absent or
in the protocol's normal-type ValueSet) that applies to this patient gives a ULN. When none
or several different ones may apply, the ULN is unknown and the caller must say so: taking
the protocol's default instead could be looser than the patient's own limit. The default
is only for a result that reports no upper limit at all.

A range with no numeric ``high`` but a ``text`` ("0-33 U/L", "< 40") states its limit in
words: it is read (``range_text``) and counts like a ``high``; a text that cannot be read
gives no ULN (its text quoted), never the default. A text with no unit shares the result's
unit (the caller then checks the limit is plausible, as for a bare ``high``).

What counts as "normal" and how sexes are coded is protocol data (``[general]``
``reference_range_*`` keys), not code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from service import units
from service.clinical.dates import parse_date
from service.clinical.range_text import quoted, read_upper
from service.protocol import Protocol, ValueSet
from service.record import Resource, codings


@dataclass(frozen=True, slots=True)
class RangeRules:
    """The protocol's reading of ``referenceRange.type`` and ``referenceRange.appliesTo``."""

    normal_types: ValueSet | None  # None: only a range without a type is a normal range
    sexes: dict[str, ValueSet]  # Patient.gender -> appliesTo codes meaning that sex
    sex_texts: dict[str, frozenset[str]]  # Patient.gender -> appliesTo texts (lower case)

    @classmethod
    def of(cls, protocol: Protocol) -> RangeRules:
        """From ``[general]``; a protocol without these keys reads every typed or
        population-specific range as "cannot tell" (undetermined), never as the patient's."""
        g = protocol.general
        normal = g.get("reference_range_normal_type_valueset")
        return cls(
            protocol.valueset(normal) if normal else None,
            {
                sex: protocol.valueset(vs)
                for sex, vs in g.get("reference_range_sex_valuesets", {}).items()
            },
            {
                sex: frozenset(t.strip().lower() for t in texts)
                for sex, texts in g.get("reference_range_sex_texts", {}).items()
            },
        )


@dataclass(frozen=True, slots=True)
class Uln:
    value: float  # in the target unit
    source: str  # in words, e.g. "ULN from the result (range for male)"


@dataclass(frozen=True, slots=True)
class NoUln:
    why: str  # why no ULN can be taken from the result's ranges


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _label(concept: Any) -> str:
    if not isinstance(concept, dict):
        return "?"
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    text = concept.get("text")
    return text if isinstance(text, str) and text else "?"


def describe(ref_range: dict[str, Any], value_unit: str | None) -> str:
    """One range in words, e.g. "≤ 35 U/L for Female, age 18–65 a" (named in notes)."""
    low, high = ref_range.get("low"), ref_range.get("high")
    if _numeric_high(ref_range) is None and _has_text(ref_range):
        return _with_population(f"text {quoted(ref_range['text'])}", ref_range)
    unit = ""
    if isinstance(high, dict):
        unit = high.get("unit") or high.get("code") or value_unit or ""
    bounds = []
    if isinstance(low, dict) and _number(low.get("value")):
        bounds.append(_fmt(low["value"]))
    if isinstance(high, dict) and _number(high.get("value")):
        bounds.append(_fmt(high["value"]))
    text = "–".join(bounds) if len(bounds) == 2 else f"≤ {bounds[-1]}" if bounds else "?"
    return _with_population(f"{text} {unit}".strip(), ref_range)


def _with_population(text: str, ref_range: dict[str, Any]) -> str:
    """``text`` followed by whom the range is for (appliesTo, age) and its type."""
    applies = ref_range.get("appliesTo")
    if isinstance(applies, list) and applies:
        text += " for " + " and ".join(_label(a) for a in applies)
    age = ref_range.get("age")
    if isinstance(age, dict):
        ends = [
            f"{_fmt(q['value'])} {q.get('unit') or q.get('code') or ''}".strip()
            if isinstance(q, dict) and _number(q.get("value"))
            else "…"
            for q in (age.get("low"), age.get("high"))
        ]
        text += f", age {ends[0]}–{ends[1]}"
    if isinstance(ref_range.get("type"), dict):
        text += f", type {_label(ref_range['type'])}"
    return text


def _numeric_high(ref_range: dict[str, Any]) -> dict[str, Any] | None:
    high = ref_range.get("high")
    return high if isinstance(high, dict) and _number(high.get("value")) else None


def _has_text(ref_range: dict[str, Any]) -> bool:
    text = ref_range.get("text")
    return text is not None and not (isinstance(text, str) and not text.strip())


def _stated_high(ref_range: dict[str, Any]) -> dict[str, Any] | None:
    """The range's upper limit as a Quantity: its ``high``, else the one its text states.

    None when it has neither (e.g. only ``low``), or its text cannot be read.
    """
    high = _numeric_high(ref_range)
    if high is not None or not _has_text(ref_range):
        return high
    said = read_upper(ref_range["text"])
    if said is None:
        return None
    return {"value": said.value, **({"unit": said.unit} if said.unit else {})}


def _is_normal(ref_range: dict[str, Any], rules: RangeRules) -> bool:
    kind = ref_range.get("type")
    if kind is None:
        return True
    return rules.normal_types is not None and rules.normal_types.matches(codings(kind))


def _sex_of(concept: Any, rules: RangeRules) -> str | None:
    """The Patient.gender a population concept means, or None when it is not a sex we know."""
    codes = list(codings(concept))
    for sex, vs in rules.sexes.items():
        if vs.matches(codes):
            return sex
    text = concept.get("text") if isinstance(concept, dict) else None
    if not codes and isinstance(text, str):
        for sex, texts in rules.sex_texts.items():
            if text.strip().lower() in texts:
                return sex
    return None


# UCUM age units, and the words laboratories put in Quantity.unit for them.
_AGE_UNITS = {
    **{u: "a" for u in ("a", "y", "yr", "yrs", "year", "years")},
    **{u: "mo" for u in ("mo", "month", "months")},
    **{u: "wk" for u in ("wk", "week", "weeks")},
    **{u: "d" for u in ("d", "day", "days")},
}


def _completed(unit: str | None, birth: date, day: date) -> int | None:
    """Completed age in ``unit`` (UCUM a, mo, wk or d) on ``day``; None for another unit."""
    months = (day.year - birth.year) * 12 + day.month - birth.month - (day.day < birth.day)
    days = (day - birth).days
    per = {"a": months // 12, "mo": months, "wk": days // 7, "d": days}
    return per.get(_AGE_UNITS.get((unit or "").strip().lower(), ""))


def _age_applies(age: Any, patient: Resource, day: date) -> bool | None:
    """Whether the result's day falls in an age range; None when it cannot be told."""
    if not isinstance(age, dict):
        return None
    born = parse_date(patient.get("birthDate"))
    if born is None or born.earliest > day:
        return None
    verdicts = set()
    for birth in (born.earliest, born.latest):  # the oldest and the youngest possible age
        if birth > day:
            return None
        inside = True
        for bound, inside_if in (("low", lambda a, b: a >= b), ("high", lambda a, b: a <= b)):
            q = age.get(bound)
            if q is None:
                continue
            if not isinstance(q, dict) or not _number(q.get("value")):
                return None
            completed = _completed(units.unit_of(q), birth, day)
            if completed is None:
                return None
            inside = inside and inside_if(completed, q["value"])
        verdicts.add(inside)
    return verdicts.pop() if len(verdicts) == 1 else None


def applies(
    ref_range: dict[str, Any], patient: Resource, day: date, rules: RangeRules
) -> bool | None:
    """True / False, or None when it cannot be told whether the range is this patient's.

    Several ``appliesTo`` populations must all hold (FHIR: their intersection).
    """
    verdicts: list[bool | None] = []
    populations = ref_range.get("appliesTo")
    if populations:
        gender = patient.get("gender")
        for concept in populations if isinstance(populations, list) else [None]:
            sex = _sex_of(concept, rules)
            if sex is None or gender not in rules.sexes:
                verdicts.append(None)  # a population we cannot place, or no usable gender
            else:
                verdicts.append(sex == gender)
    if ref_range.get("age") is not None:
        verdicts.append(_age_applies(ref_range["age"], patient, day))
    if False in verdicts:
        return False
    return None if None in verdicts else True


def upper_limit(
    item: Resource,
    patient: Resource,
    day: date,
    target: str,
    rules: RangeRules,
) -> Uln | NoUln | None:
    """This patient's ULN from ``item``'s reference ranges, in ``target``.

    None when no range has a numeric ``high`` or a ``text`` (the caller may use the
    protocol default); ``NoUln`` when there are upper limits but none, or several different
    ones, may be the patient's, or the one that is cannot be converted, or a range that may
    be the patient's has a text that cannot be read.
    """
    ranges = item.get("referenceRange")
    if not isinstance(ranges, list):
        return None
    with_high = [
        r for r in ranges if isinstance(r, dict) and (_numeric_high(r) is not None or _has_text(r))
    ]
    if not with_high:
        return None
    quantity = item.get("valueQuantity")
    value_unit = units.unit_of(quantity) if isinstance(quantity, dict) else None
    named = "; ".join(describe(r, value_unit) for r in with_high)
    possible: list[tuple[dict[str, Any], bool | None, dict[str, Any] | None]] = []
    for r in with_high:
        if _is_normal(r, rules):
            verdict = applies(r, patient, day, rules)
            if verdict is not False:
                possible.append((r, verdict, _stated_high(r)))
    if not possible:
        return NoUln(f"no normal reference range of the result applies to this patient ({named})")
    unread = next((r for r, _, high in possible if high is None), None)
    if unread is not None:
        return NoUln(
            f"the reference range text {quoted(unread['text'])} of the result cannot be read "
            "as an upper limit"
        )
    highs: dict[float, dict[str, Any]] = {}
    for r, _, high in possible:
        assert high is not None  # unread ranges returned above
        unit = units.unit_of(high) or value_unit  # a bare high shares the value's unit
        try:
            converted = units.convert(float(high["value"]), unit, target)
        except units.UnitError as exc:
            return NoUln(
                f"the upper limit of {describe(r, value_unit)} cannot be converted ({exc})"
            )
        highs.setdefault(round(converted, 9), r)
    unknown = any(verdict is None for _, verdict, _ in possible)
    said = f"Patient.gender {patient.get('gender')!r}, birthDate {patient.get('birthDate')!r}"
    if len(highs) > 1 and not unknown:
        return NoUln(
            "several reference ranges of the result apply to this patient "
            f"and their upper limits differ ({named})"
        )
    if len(highs) > 1 or not any(verdict for _, verdict, _ in possible):
        return NoUln(
            f"it cannot be told which reference range of the result applies to this patient "
            f"({named}; {said})"
        )
    uln, chosen = next(iter(highs.items()))
    specific = chosen.get("appliesTo") or chosen.get("age") is not None
    from_text = _numeric_high(chosen) is None
    source = "ULN from the result" + (
        f": range {describe(chosen, value_unit)}"
        if from_text
        else f" (range {describe(chosen, value_unit)})"
        if specific
        else ""
    )
    if from_text and not units.unit_of(_stated_high(chosen) or {}):
        source += "; the text names no unit, so the result's unit is assumed"
    return Uln(uln, source)
