"""Turn one patient's FHIR data (a Bundle, or resources fetched from a server) into a record
the evaluators can read: relevant resources only, indexed, with the patient's identity checked.

This is the only place input is filtered, so the evaluators never see other patients' data
and one malformed resource is skipped here with a warning instead of sinking the evaluation.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from service.clinical.model import Issue, Severity, SourceRef
from service.protocol import Code, Protocol, ValueSet
from service.shapes import shape_error

Resource = dict[str, Any]

# The reference element that names the patient, per resource type we evaluate.
SUBJECT_ELEMENT: dict[str, str] = {
    "Observation": "subject",
    "Condition": "subject",
    "Procedure": "subject",
    "Consent": "patient",
    "QuestionnaireResponse": "subject",
}


class InputError(ValueError):
    """The input cannot be evaluated at all (not JSON, not a Bundle, no single Patient)."""


@dataclass(slots=True)
class Entry:
    resource: Resource
    full_url: str | None = None


@dataclass
class PatientRecord:
    patient: Resource
    patient_id: str
    patient_reference: str
    observations: dict[Code, list[Resource]] = field(default_factory=dict)
    conditions: list[Resource] = field(default_factory=list)
    procedures: list[Resource] = field(default_factory=list)
    consents: list[Resource] = field(default_factory=list)
    questionnaire_responses: list[Resource] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    truncated: frozenset[str] = frozenset()  # ValueSet ids / resource types a server search cut
    unreadable: frozenset[str] = frozenset()  # ... that had a malformed or conflicting resource
    _refs: dict[int, SourceRef] = field(default_factory=dict, repr=False)

    def observations_in(self, valueset: ValueSet) -> list[Resource]:
        """Observations coded with any code of ``valueset``, each once."""
        seen: set[int] = set()
        found: list[Resource] = []
        for code in valueset.codes:
            for obs in self.observations.get(code, ()):
                if id(obs) not in seen:
                    seen.add(id(obs))
                    found.append(obs)
        return found

    def ref(self, resource: Resource) -> SourceRef:
        return self._refs[id(resource)]

    @property
    def patient_ref(self) -> SourceRef:
        return SourceRef(self.patient_reference, "Patient")

    def is_truncated(self, *feeds: str) -> bool:
        return any(f in self.truncated for f in feeds)

    def is_unreadable(self, *feeds: str) -> bool:
        return any(f in self.unreadable for f in feeds)


def codings(concept: Any) -> Iterator[Code]:
    """(system, code) pairs of a CodeableConcept; tolerant of missing parts."""
    if not isinstance(concept, dict):
        return
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and "code" in coding:
            yield (coding.get("system") or "", str(coding["code"]))


def _reference_of(resource: Resource, full_url: str | None) -> str | None:
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return f"{resource['resourceType']}/{rid}"
    return full_url


def _iter_entries(bundle: Resource, issues: list[Issue]) -> Iterator[Entry]:
    """Entries of a Bundle of any type; Bundles nested in a batch-response are opened once."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise InputError("Bundle.entry is not a list")
    for position, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            if isinstance(entry, dict) and "response" in entry and resource is None:
                continue  # a batch-response entry that carries only a status
            issues.append(
                Issue(Severity.WARNING, "invalid", f"Bundle entry {position} has no resource")
            )
            continue
        if resource["resourceType"] == "Bundle":
            yield from _iter_entries(resource, issues)
            continue
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        yield Entry(resource, full_url)


def select_patient(entries: list[Entry], patient_id: str | None) -> Entry:
    patients = [e for e in entries if e.resource["resourceType"] == "Patient"]
    if patient_id is not None:
        chosen = [e for e in patients if patient_id in (e.resource.get("id"), e.full_url)]
        if not chosen:
            raise InputError(f"no Patient with id {patient_id!r} in the Bundle")
        if len(chosen) > 1:
            raise InputError(f"{len(chosen)} Patient resources match {patient_id!r}: ambiguous")
        return chosen[0]
    if not patients:
        raise InputError("the Bundle holds no Patient resource")
    if len(patients) > 1:
        raise InputError(
            f"the Bundle holds {len(patients)} Patient resources; say which one to evaluate"
        )
    return patients[0]


def record_from_bundle(
    bundle: Any, protocol: Protocol, patient_id: str | None = None
) -> PatientRecord:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        kind = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise InputError(f"expected a FHIR Bundle, got {kind!r}")
    issues: list[Issue] = []
    entries = list(_iter_entries(bundle, issues))
    patient = select_patient(entries, patient_id)
    return build_record(patient, entries, protocol, issues=issues)


def record_from_resources(
    patient: Resource,
    resources: Iterable[Resource],
    protocol: Protocol,
    *,
    issues: Iterable[Issue] = (),
    truncated: frozenset[str] = frozenset(),
) -> PatientRecord:
    """For data fetched from a server (pull mode, CDS Hooks prefetch)."""
    entries = [Entry(r) for r in resources if isinstance(r, dict) and "resourceType" in r]
    return build_record(Entry(patient), entries, protocol, issues=list(issues), truncated=truncated)


def build_record(
    patient: Entry,
    entries: Iterable[Entry],
    protocol: Protocol,
    *,
    issues: list[Issue],
    truncated: frozenset[str] = frozenset(),
) -> PatientRecord:
    pid = patient.resource.get("id") or patient.full_url
    if not isinstance(pid, str) or not pid:
        raise InputError("the Patient has neither an id nor a fullUrl")
    patient = Entry(_usable_patient(patient.resource, issues), patient.full_url)
    reference = _reference_of(patient.resource, patient.full_url) or pid
    aliases = _Aliases(patient.resource.get("id"), patient.full_url)
    record = PatientRecord(patient.resource, pid, reference, issues=issues, truncated=truncated)
    record._refs[id(patient.resource)] = SourceRef(reference, "Patient")

    wanted_codes = protocol.observation_codes()
    observations: defaultdict[Code, list[Resource]] = defaultdict(list)
    targets = {
        "Condition": record.conditions,
        "Procedure": record.procedures,
        "Consent": record.consents,
        "QuestionnaireResponse": record.questionnaire_responses,
    }
    other_patient: Counter[str] = Counter()
    unlinked: Counter[str] = Counter()

    kept: dict[tuple[str, str], tuple[Resource, list[Code]]] = {}
    unreadable: set[str] = set()
    for entry in entries:
        resource = entry.resource
        rtype = resource["resourceType"]
        if rtype not in SUBJECT_ELEMENT or resource is patient.resource:
            continue
        matched: list[Code] = []
        try:
            if rtype == "Observation":
                matched = [c for c in codings(resource.get("code")) if c in wanted_codes]
                if "component" in resource:  # a panel may carry the result in a component
                    matched += _component_codes(resource["component"], wanted_codes)
                if not matched:
                    continue  # not an input of this protocol: skip before any other work
            subject = resource.get(SUBJECT_ELEMENT[rtype])
            ref = subject.get("reference") if isinstance(subject, dict) else None
            if not isinstance(ref, str):
                unlinked[rtype] += 1
                continue
            if _normalise(ref) not in aliases:
                other_patient[rtype] += 1
                continue
            bad = shape_error(resource)
            if bad is not None:
                raise _Malformed(bad)
        except (_Malformed, AttributeError, TypeError, KeyError, ValueError) as exc:
            # Its criteria cannot be decided: an unreadable newer result may be the one
            # that matters, so it is not simply dropped in favour of older data.
            unreadable |= _feeds(rtype, matched, protocol)
            where = f" ({exc.args[0]} has the wrong type)" if isinstance(exc, _Malformed) else ""
            issues.append(
                Issue(
                    Severity.WARNING,
                    "invalid",
                    f"malformed {rtype} could not be read{where}",
                    _reference_of(resource, entry.full_url),
                )
            )
            continue
        reference = _reference_of(resource, entry.full_url) or f"{rtype}#{len(kept)}"
        record._refs[id(resource)] = SourceRef(reference, rtype)
        key = (rtype, reference)
        if key in kept:
            resource = _one_version(
                kept[key][0],
                resource,
                reference,
                issues,
                unreadable,
                _feeds(rtype, matched, protocol),
            )
        kept[key] = (resource, matched)

    for (rtype, _), (resource, matched) in kept.items():
        if rtype == "Observation":
            for code in matched:
                observations[code].append(resource)
        else:
            targets[rtype].append(resource)
    record.unreadable = frozenset(unreadable)

    record.observations = dict(observations)
    for rtype, n in sorted(other_patient.items()):
        issues.append(
            Issue(Severity.WARNING, "processing", f"{n} {rtype}(s) of another patient ignored")
        )
    for rtype, n in sorted(unlinked.items()):
        issues.append(
            Issue(
                Severity.WARNING,
                "processing",
                f"{n} {rtype} resource(s) without a patient reference ignored",
            )
        )
    return record


def _component_codes(components: Any, wanted: frozenset[Code]) -> list[Code]:
    """Wanted codes of an Observation's components (the shape check catches a bad list)."""
    if not isinstance(components, list):
        return []
    found = [c for part in components if isinstance(part, dict) for c in codings(part.get("code"))]
    return [c for c in dict.fromkeys(found) if c in wanted]


def _feeds(rtype: str, matched: list[Code], protocol: Protocol) -> set[str]:
    """What a resource feeds: its Observation ValueSets, or its resource type."""
    if rtype != "Observation":
        return {rtype}
    return {vs.id for vs in protocol.valuesets.values() if vs.codes.intersection(matched)}


def _one_version(
    old: Resource,
    new: Resource,
    reference: str,
    issues: list[Issue],
    unreadable: set[str],
    feeds: set[str],
) -> Resource:
    """Two copies of one resource: keep the later version, or flag a conflict we cannot order."""
    if old == new:
        return old
    stamps = [(r.get("meta") or {}).get("lastUpdated") for r in (old, new)]
    if all(isinstance(t, str) for t in stamps) and stamps[0] != stamps[1]:
        return new if stamps[1] > stamps[0] else old
    unreadable |= feeds
    issues.append(
        Issue(
            Severity.WARNING,
            "duplicate",
            "two different versions of this resource and no way to tell which is current",
            reference,
        )
    )
    return new


class _Malformed(ValueError):
    """A resource element we read has the wrong JSON type (args[0] names it)."""


def _usable_patient(resource: Resource, issues: list[Issue]) -> Resource:
    """The Patient with each wrongly typed element made present-but-unreadable.

    The patient is the subject, so it is never skipped. An unreadable element is not the
    same as a missing one: an unreadable death record must not read as "alive", so it makes
    the criteria it feeds undetermined.
    """
    patient = resource
    while (bad := shape_error(patient)) is not None:
        element = bad.split(".")[0].split("[")[0]
        patient = {k: v for k, v in patient.items() if k != element}
        patient["deceasedDateTime" if element.startswith("deceased") else element] = ""
        issues.append(
            Issue(Severity.WARNING, "invalid", f"Patient.{element} has the wrong type; unreadable")
        )
    return patient


def _normalise(reference: str) -> str:
    """Drop a version suffix so 'Patient/1/_history/2' names 'Patient/1'."""
    head, sep, _ = reference.partition("/_history/")
    return head if sep else reference


class _Aliases:
    """Every way a reference may name our patient: relative, absolute, or the entry fullUrl."""

    __slots__ = ("relative", "full_url", "suffix")

    def __init__(self, rid: str | None, full_url: str | None) -> None:
        self.relative = f"Patient/{rid}" if rid else None
        self.suffix = f"/Patient/{rid}" if rid else None
        self.full_url = full_url

    def __contains__(self, reference: str) -> bool:
        if reference == self.relative or (self.full_url and reference == self.full_url):
            return True
        if self.full_url and self.full_url.startswith(("http://", "https://")):
            return False  # the Patient's own URL names its server: another server's p1 is not ours
        absolute = reference.startswith(("http://", "https://"))
        return bool(self.suffix and absolute and reference.endswith(self.suffix))
