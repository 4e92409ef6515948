"""A result's method, when the Observation does not code it but what it belongs to does.

Real exports code LVEF with the method-agnostic LOINC 10230-1 and leave ``Observation.method``
empty; the method is then told by the resource the result is *part of*: a DiagnosticReport
whose ``result`` lists it (an echocardiography report) or a Procedure it is ``partOf`` (an
echocardiography). Only these explicit links count: a report or procedure that merely shares
the encounter or the day says nothing about how this value was measured.

A link that contradicts the method (``Observation.method`` coded otherwise, ``partOf`` a
procedure of another kind) wins over any supporting link: the result stays evidence only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from service.protocol import ValueSet
from service.record import Resource, codings

if TYPE_CHECKING:
    from service.record import PatientRecord

# A report that is not final (preliminary, entered-in-error, cancelled) does not establish
# anything; an echocardiography that was not done (not-done, entered-in-error) neither.
REPORT_STATUSES = frozenset({"final", "amended", "corrected", "appended"})
PROCEDURE_STATUSES = frozenset({"completed"})


def _label(resource: Resource, valueset: ValueSet) -> str | None:
    """The display of ``resource``'s first code in ``valueset``; None when none is in it."""
    for code in codings(resource.get("code")):
        if code in valueset.codes:
            return valueset.display(code) or code[1]
    return None


def _name(record: PatientRecord, resource: Resource) -> str:
    try:
        return record.ref(resource).reference
    except KeyError:
        rid = resource.get("id")
        return f"{resource.get('resourceType')}/{rid}" if isinstance(rid, str) else "a resource"


def _part_of(obs: Resource, record: PatientRecord) -> list[Resource]:
    """The Procedures ``obs`` says it is part of, as found in this patient's data."""
    links: Any = obs.get("partOf")
    found = []
    for link in links if isinstance(links, list) else ():
        target = record.resolve(link, obs)
        if isinstance(target, dict) and target.get("resourceType") == "Procedure":
            found.append(target)
    return found


def from_procedure(
    obs: Resource, record: PatientRecord, valueset: ValueSet
) -> str | None | Literal[False]:
    """The method from a Procedure ``obs`` is ``partOf``, in words; None when there is none;
    False when it is part of a Procedure of another kind (a contradiction)."""
    said: str | None = None
    for procedure in _part_of(obs, record):
        label = _label(procedure, valueset)
        if label is None:
            return False
        if procedure.get("status") in PROCEDURE_STATUSES and said is None:
            said = f"{label}, from {_name(record, procedure)}"
    return said


def from_report(obs: Resource, record: PatientRecord, valueset: ValueSet) -> str | None:
    """The method from a final DiagnosticReport of ``valueset`` that lists ``obs`` as a result."""
    for report in record.reports:
        label = _label(report, valueset)
        if label is None or report.get("status") not in REPORT_STATUSES:
            continue
        results: Any = report.get("result")
        for link in results if isinstance(results, list) else ():
            if record.resolve(link, report) is obs:
                return f"{label}, from {_name(record, report)}"
    return None
