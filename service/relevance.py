"""Which of a patient's resources one evaluation reads: one answer for every source.

A posted Bundle (generic and lean decoding), pull mode, a CDS Hooks prefetch, NDJSON / Bulk
screening and site-terminology pre-translation all ask this object, built from the protocol
(and the site terminology in force), so they cannot select different data for the same
patient (a panel's component, a contained member, a merged record). The record builder does
the exact work; everything here is a *superset* test (a resource it keeps and the builder
then drops costs a little time; one it drops that the builder would keep is a wrong answer).

* ``matches(resource)``: a type a rule reads whole, or an Observation whose code, a
  component's code or a contained member's code is a protocol code (or a site code mapped
  to one; with a terminology server, every Observation: its codes are unknown until asked).
* ``queries(patient, as_of)``: pull-mode searches and CDS Hooks prefetch templates.
* ``type_filters()``, ``export_types()``: the Bulk ``$export`` parameters.
* ``lean_codes``: the codes the byte-level plan (service.lean) keeps entries for.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from functools import cached_property
from typing import TYPE_CHECKING, Any

from service.contained import has_members, member_results
from service.resource_kinds import EVALUATED, KINDS, MEDICATION_TYPES, ON_DEMAND

if TYPE_CHECKING:
    from service.fhir.queries import Query
    from service.protocol import Code, Protocol
    from service.terminology.runtime import Terminology

Resource = dict[str, Any]


class Relevance:
    """The protocol's selection of a patient's data (see the module docstring)."""

    def __init__(self, protocol: Protocol, site: Terminology | None = None) -> None:
        self.protocol = protocol
        self.site = site
        self.protocol_codes: frozenset[Code] = protocol.observation_codes()
        local = site.local_codes(self.protocol_codes) if site is not None else set()
        # what an Observation must carry somewhere to be read (before any mapping)
        self.codes: frozenset[Code] = self.protocol_codes | frozenset(local)
        self.every_observation = site is not None and site.translator is not None
        # DiagnosticReports a broader result may take its method from (LVEF by echo report)
        self.report_codes: frozenset[Code] = _report_codes(protocol)
        # every type a rule reads today, plus those only some rules read (medications)
        # when one of this protocol's criteria has such a rule: a protocol without one
        # fetches, keeps and exports exactly what it did before
        self.types: tuple[str, ...] = EVALUATED + _on_demand_types(protocol)

    # -- one resource ----------------------------------------------------------------------
    def reads(self, rtype: Any) -> bool:
        """Whether a rule reads resources of this type at all (the Patient aside)."""
        return rtype in self.types

    def result_codes(self, observation: Resource) -> list[Code]:
        """Protocol codes of an Observation's own code, then of its components (once)."""
        return result_codes_in(observation, self.protocol_codes)

    def matches(self, resource: Any) -> bool:
        """Whether one evaluation may read ``resource`` (a superset of what it uses)."""
        if not isinstance(resource, dict):
            return False
        rtype = resource.get("resourceType")
        if rtype == "DiagnosticReport":
            return bool(self.report_codes)  # superset: the builder keeps only this patient's
        if rtype != "Observation":
            return self.reads(rtype)
        try:
            if self.every_observation or self._carries(resource):
                return True
            return has_members(resource) and any(
                self._carries(m) for _, m in member_results(resource)
            )
        except (TypeError, AttributeError):
            return True  # malformed: the record builder reads it and says so

    def _carries(self, observation: Resource) -> bool:
        if _codings_in(observation.get("code"), self.codes):
            return True
        components = observation.get("component")
        return isinstance(components, list) and any(
            isinstance(part, dict) and _codings_in(part.get("code"), self.codes)
            for part in components
        )

    def subject(self, resource: Resource) -> Any:
        """The element naming a read resource's patient (None when it has none)."""
        return KINDS[resource["resourceType"]].subject_of(resource)

    # -- what a resource feeds ------------------------------------------------------------
    def feeds(self, rtype: str, matched: Iterable[Code]) -> set[str]:
        """What a resource feeds: its Observation ValueSets, or its resource type."""
        if rtype != "Observation":
            return {rtype}
        matched = set(matched)
        return {vs.id for vs in self.protocol.valuesets.values() if vs.codes & matched}

    def all_feeds(self) -> set[str]:
        """Every feed a criterion can read: Observation ValueSets and the other types."""
        return set(self.protocol.observation_valuesets()) | (set(self.types) - {"Observation"})

    # -- the sources' parameters -----------------------------------------------------------
    def queries(self, patient_id: str, as_of: date | None) -> list[Query]:
        """Pull-mode searches for one patient (``as_of=None``: no date filters)."""
        from service.fhir.queries import plan_for

        return plan_for(self, patient_id, as_of)

    def prefetch_templates(self) -> dict[str, str]:
        from service.fhir.queries import templates_for

        return templates_for(self)

    def export_types(self) -> list[str]:
        """Bulk ``_type``: the Patient and every type a rule reads (with the Medications a
        medication resource may name: an export has no ``_include``)."""
        medications = any(t in MEDICATION_TYPES for t in self.types)
        return [
            "Patient",
            *self.types,
            *(["DiagnosticReport"] if self.report_codes else []),
            *(["Medication"] if medications else []),
        ]

    def type_filters(self) -> list[str]:
        """Bulk ``_typeFilter``: Observations by ``combo-code`` (code or component code), as
        pull mode searches them; no filter with a terminology server (codes unknown)."""
        if self.every_observation:
            return []
        from service.fhir.queries import token_param

        param = KINDS["Observation"].code_param
        filters = [f"Observation?{param}={token_param(self.codes)}"]
        if self.report_codes:
            filters.append(f"DiagnosticReport?code={token_param(self.report_codes)}")
        return filters

    @cached_property
    def lean_codes(self) -> tuple[bytes, ...]:
        """The codes, as UTF-8, for which the byte-level plan keeps an Observation (whatever
        their system: a code of another system only costs a decode)."""
        return tuple(sorted({code.encode() for _, code in self.codes}))


def _on_demand_types(protocol: Protocol) -> tuple[str, ...]:
    """The ``ON_DEMAND`` types some criterion's rule declares it reads (``@rule(reads=)``)."""
    from service.clinical.rules import load_all  # the rules import the record, which imports us

    rules = load_all()
    read: set[str] = set()
    for criterion in protocol.criteria.values():
        found = rules.get(criterion.rule)
        if found is not None:
            read |= found.reads
    return tuple(t for t in ON_DEMAND if t in read)


def _report_codes(protocol: Protocol) -> frozenset[Code]:
    """Codes of the DiagnosticReports a result may take its method from (every
    ``*_report_valueset`` parameter; all history: a report is read only for the results it
    lists, which carry their own dates)."""
    codes: set[Code] = set()
    for criterion in protocol.criteria.values():
        for param, vs_id in criterion.params.items():
            if param.endswith("report_valueset") and vs_id:
                codes |= protocol.valueset(vs_id).codes
    return frozenset(codes)


def result_codes_in(observation: Resource, wanted: frozenset[Code]) -> list[Code]:
    """The codes in ``wanted`` of an Observation's own code, then of its components (once).
    Filtering the answer for a union of protocols' codes to one protocol's codes gives that
    protocol's answer, in the same order (service.record.SharedObservations relies on it)."""
    found = _codings_in(observation.get("code"), wanted)
    components = observation.get("component")
    if isinstance(components, list):
        parts: list[Code] = []
        for part in components:
            if isinstance(part, dict):
                parts += _codings_in(part.get("code"), wanted)
        found += dict.fromkeys(parts)
    return found


def _codings_in(concept: Any, wanted: frozenset[Code]) -> list[Code]:
    """Codings of a CodeableConcept that are in ``wanted`` (a plain loop: this runs for
    every Observation of the largest inputs)."""
    if not isinstance(concept, dict):
        return []
    found: list[Code] = []
    # a ``coding`` of the wrong type raises here: the record builder reports it malformed
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and "code" in coding:
            code = (coding.get("system") or "", str(coding["code"]))
            if code in wanted:
                found.append(code)
    return found


class RelevanceUnion:
    """Several protocols' selections as one (screening several studies in one pass over the
    data): a resource is read when any study's Relevance reads it; each study's record
    builder then keeps exactly what its own Relevance would have (a superset is safe)."""

    def __init__(self, parts: Iterable[Relevance]) -> None:
        self.parts = list(parts)
        self.codes: frozenset[Code] = frozenset().union(*(r.codes for r in self.parts))

    def reads(self, rtype: Any) -> bool:
        return any(r.reads(rtype) for r in self.parts)

    def matches(self, resource: Any) -> bool:
        return any(r.matches(resource) for r in self.parts)

    def export_types(self) -> list[str]:
        return list(dict.fromkeys(t for r in self.parts for t in r.export_types()))

    def type_filters(self) -> list[str]:
        """Every study's filters, each once; none when one study needs every Observation."""
        if any(r.every_observation for r in self.parts):
            return []
        return list(dict.fromkeys(f for r in self.parts for f in r.type_filters()))
