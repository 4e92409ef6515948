"""JSON shape checks for the elements the evaluators read.

Real servers send odd things (a status as a list, ``coding: 1``). Checking the few elements
we read, once, when a resource enters the record lets the evaluators trust their input: a
resource that breaks one is skipped with a warning instead of failing a rule halfway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import GenericAlias
from typing import Any

import msgspec

Check = Callable[[Any], str | None]  # None when fine, else the path (relative) that is wrong

# Each check also carries ``spec``: the same rule as a msgspec type, so a resource that fits
# (nearly all) is accepted by one C-speed ``msgspec.convert``; only one that does not is
# walked in Python, for the exact path to name. A check without a spec is always walked.


_MISSING = object()


def _set_spec(check: Check, spec: Any) -> None:
    """Attach the msgspec type to a check (read back with ``getattr(check, "spec", None)``)."""
    # A function attribute: Callable has no ``spec`` in its type, and a wrapper class would
    # cost a call per element on the walk that names the wrong path.
    check.spec = spec  # type: ignore[attr-defined]


def _type(*kinds: type) -> Check:
    reject_bool = bool not in kinds  # JSON true is not a number

    def check(value: Any) -> str | None:
        if isinstance(value, kinds) and not (reject_bool and value.__class__ is bool):
            return None
        return ""

    _set_spec(check, kinds[0] if len(kinds) == 1 else kinds[0] | kinds[1])
    return check


def _obj(**fields: Check) -> Check:
    items = tuple(fields.items())

    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return ""
        for name, field_check in items:
            element = value.get(name, _MISSING)
            if element is not _MISSING:
                bad = field_check(element)
                if bad is not None:
                    return f".{name}{bad}"
        return None

    specs = [getattr(c, "spec", None) for _, c in items]
    if all(spec is not None for spec in specs):
        struct_fields = [
            (n, spec | msgspec.UnsetType, msgspec.UNSET)
            for (n, _), spec in zip(items, specs, strict=True)
        ]
        _set_spec(check, msgspec.defstruct("Shape", struct_fields, gc=False))
    return check


def _list(item: Check) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return ""
        for i, element in enumerate(value):
            bad = item(element)
            if bad is not None:
                return f"[{i}]{bad}"
        return None

    item_spec = getattr(item, "spec", None)
    if item_spec is not None:
        _set_spec(check, GenericAlias(list, item_spec))  # list[item_spec], built at run time
    return check


STR = _type(str)
NUMBER = _type(int, float)
BOOL = _type(bool)
CODING = _obj(system=STR, code=STR, display=STR)
CONCEPT = _obj(coding=_list(CODING), text=STR)
PERIOD = _obj(start=STR, end=STR)
QUANTITY = _obj(value=NUMBER, comparator=STR, unit=STR, system=STR, code=STR)
REFERENCE = _obj(reference=STR, display=STR)
EXTENSION = _obj(url=STR, valueCodeableConcept=CONCEPT, valueReference=REFERENCE)
ANSWER = _obj(valueBoolean=BOOL, valueCoding=CODING, valueString=STR)


def _item(value: Any) -> str | None:
    return _obj(linkId=STR, answer=_list(ANSWER), item=_list(_item))(value)


REFERENCE_RANGE = _obj(
    low=QUANTITY,
    high=QUANTITY,
    type=CONCEPT,
    appliesTo=_list(CONCEPT),
    age=_obj(low=QUANTITY, high=QUANTITY),
)
# An Observation.component carries a result of its own (a panel sent as one resource).
COMPONENT = _obj(
    code=CONCEPT,
    valueQuantity=QUANTITY,
    valueCodeableConcept=CONCEPT,
    valueString=STR,
    valueInteger=_type(int),
    dataAbsentReason=CONCEPT,
    interpretation=_list(CONCEPT),
    referenceRange=_list(REFERENCE_RANGE),
)

META = _obj(lastUpdated=STR)  # read to order two versions of one resource

# What every medication resource is read for: its status and its drug (coded or referenced).
_MEDICATION: dict[str, Check] = {
    "meta": META,
    "status": STR,
    "medicationCodeableConcept": CONCEPT,
    "medicationReference": REFERENCE,
}

RESOURCE_SHAPES: dict[str, Check] = {
    "Patient": _obj(birthDate=STR, gender=STR, deceasedBoolean=BOOL, deceasedDateTime=STR),
    "Observation": _obj(
        meta=META,
        status=STR,
        code=CONCEPT,
        effectiveDateTime=STR,
        effectivePeriod=PERIOD,
        effectiveInstant=STR,
        issued=STR,
        valueQuantity=QUANTITY,
        valueCodeableConcept=CONCEPT,
        valueString=STR,
        valueInteger=_type(int),
        interpretation=_list(CONCEPT),
        referenceRange=_list(REFERENCE_RANGE),
        component=_list(COMPONENT),
        extension=_list(EXTENSION),
    ),
    "Condition": _obj(
        meta=META,
        code=CONCEPT,
        clinicalStatus=CONCEPT,
        verificationStatus=CONCEPT,
        onsetDateTime=STR,
        onsetPeriod=PERIOD,
        abatementDateTime=STR,
        recordedDate=STR,
        extension=_list(EXTENSION),
    ),
    "Procedure": _obj(
        meta=META, status=STR, code=CONCEPT, performedDateTime=STR, performedPeriod=PERIOD
    ),
    "Consent": _obj(
        meta=META,
        status=STR,
        scope=CONCEPT,
        dateTime=STR,
        provision=_obj(type=STR, period=PERIOD),
        policy=_list(_obj(uri=STR)),
        extension=_list(EXTENSION),
    ),
    "QuestionnaireResponse": _obj(
        meta=META, status=STR, questionnaire=STR, authored=STR, author=REFERENCE, item=_list(_item)
    ),
    # medications (read only when a protocol has a medication rule: service.relevance)
    "MedicationRequest": _obj(
        **_MEDICATION,
        intent=STR,
        authoredOn=STR,
        dosageInstruction=_list(_obj(timing=_obj(repeat=_obj(boundsPeriod=PERIOD)))),
        dispenseRequest=_obj(validityPeriod=PERIOD),
    ),
    "MedicationAdministration": _obj(**_MEDICATION, effectiveDateTime=STR, effectivePeriod=PERIOD),
    "MedicationStatement": _obj(
        **_MEDICATION, effectiveDateTime=STR, effectivePeriod=PERIOD, dateAsserted=STR
    ),
    "MedicationDispense": _obj(
        **_MEDICATION, whenHandedOver=STR, whenPrepared=STR, daysSupply=QUANTITY
    ),
}


_FITS = {rtype: getattr(check, "spec", None) for rtype, check in RESOURCE_SHAPES.items()}
_FITS_ALL = {rtype: GenericAlias(list, spec) for rtype, spec in _FITS.items() if spec is not None}


def fitting(resources: Iterable[dict[str, Any]]) -> set[int]:
    """The ids of ``resources`` known to fit their shape (``shape_error`` is None), found
    with one msgspec call per resource type when every resource of that type fits (the
    usual case). A type with a misfit is left out: check those one by one."""
    by_type: dict[Any, list[dict[str, Any]]] = {}
    for resource in resources:
        by_type.setdefault(resource.get("resourceType"), []).append(resource)
    fits: set[int] = set()
    for rtype, group in by_type.items():
        spec = _FITS_ALL.get(rtype)
        if spec is None:
            continue
        try:
            msgspec.convert(group, spec, strict=True)
        except msgspec.ValidationError:
            continue
        fits.update(map(id, group))
    return fits


def shape_error(resource: dict[str, Any]) -> str | None:
    """The first element of ``resource`` we read whose JSON type is wrong, e.g. 'status'."""
    rtype = resource.get("resourceType", "")
    check = RESOURCE_SHAPES.get(rtype)
    if check is None:
        return None
    spec = _FITS[rtype]
    if spec is not None:
        try:
            msgspec.convert(resource, spec, strict=True)
            return None
        except msgspec.ValidationError:
            pass  # the walk below names the element
    bad = check(resource)
    return bad.lstrip(".") if bad is not None else None
