"""The FHIR resource types the service reads, and where each keeps what every path needs.

One table instead of type lists in the record builder, the NDJSON grouping, the pull-mode
query plan and the Bulk export: a type added here is read the same way by all of them
(service.relevance builds every source's selection from it). ``times`` lists the elements
that date a resource, in the order FHIR gives them (the date-interval reader reads them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Resource = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """How one resource type names its patient, its status, its clinical time and its code."""

    name: str
    subject: tuple[str, ...]  # reference elements that name the patient, first one preferred
    status: str | None  # the element whose value says entered-in-error, cancelled, ...
    times: tuple[str, ...]  # elements that date it (choice types spelled out), FHIR order
    code: str | None  # the CodeableConcept the protocol's codes are compared with
    patient_param: str | None  # search parameter for "this patient's" (None: not searched)
    code_param: str | None  # search parameter for its code (None: not searched by code)
    evaluated: bool  # a rule reads it today: the record builder keeps it, every path fetches it
    search_key: str | None = None  # its pull-mode search's name (also the CDS prefetch key)
    # when it happened, as service.clinical.timing reads it: the first element present
    # decides ("[x]": any choice type); Condition.abatement[x] is read apart, as an end
    clinical_time: tuple[str, ...] = ()
    # a referenced resource its searches bring along (``_include``): a medication's product
    include: str | None = None

    def subject_of(self, resource: Resource) -> Any:
        """The first subject element present (its value, unchecked), or None."""
        for element in self.subject:
            value = resource.get(element)
            if value is not None:
                return value
        return None


def _kind(
    name: str,
    times: tuple[str, ...],
    *,
    subject: tuple[str, ...] = ("subject",),
    status: str | None = "status",
    code: str | None = "code",
    patient_param: str | None = "patient",
    code_param: str | None = "code",
    evaluated: bool = False,
    search_key: str | None = None,
    clinical_time: tuple[str, ...] = (),
    include: str | None = None,
) -> ResourceKind:
    return ResourceKind(
        name,
        subject,
        status,
        times,
        code,
        patient_param,
        code_param,
        evaluated,
        search_key,
        clinical_time,
        include,
    )


_EFFECTIVE = ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "effectiveTiming")
_ONSET = ("onsetDateTime", "onsetAge", "onsetPeriod", "onsetRange", "onsetString")
_PERFORMED = (
    "performedDateTime",
    "performedPeriod",
    "performedString",
    "performedAge",
    "performedRange",
)

KINDS: dict[str, ResourceKind] = {
    k.name: k
    for k in (
        ResourceKind(
            "Patient",
            (),
            None,
            ("birthDate", "deceasedDateTime"),
            None,
            "_id",
            None,
            True,
            "patient",
        ),
        # combo-code: R4 "Observation.code | Observation.component.code" (a panel may carry
        # the analyte only on a component, which a ``code`` search never finds)
        _kind(
            "Observation",
            (*_EFFECTIVE, "issued"),
            code_param="combo-code",
            evaluated=True,
            clinical_time=("effective[x]", "issued"),
        ),
        _kind(
            "Condition",
            (*_ONSET, "recordedDate"),
            status="clinicalStatus",
            evaluated=True,
            search_key="conditions",
            clinical_time=("onset[x]", "recordedDate"),
        ),
        _kind(
            "Procedure",
            _PERFORMED,
            evaluated=True,
            search_key="procedures",
            clinical_time=("performed[x]",),
        ),
        _kind(
            "Consent",
            ("dateTime",),
            subject=("patient",),
            code="category",
            code_param=None,
            evaluated=True,
            search_key="consents",
            clinical_time=("dateTime",),
        ),
        _kind(
            "QuestionnaireResponse",
            ("authored",),
            code=None,
            code_param=None,
            evaluated=True,
            search_key="attestations",
            clinical_time=("authored",),
        ),
        # read only when a protocol names echo (or other) reports: Relevance.report_codes
        _kind(
            "DiagnosticReport",
            ("effectiveDateTime", "effectivePeriod", "issued"),
            code_param="code",
            clinical_time=("effective[x]", "issued"),
        ),
        # Medications: read only when a criterion's rule reads them (Relevance.types, from
        # the rule's ``reads``); each search brings the Medication its medicationReference
        # names (``_include``), as contained or bundled ones are read in bundle mode.
        _kind(
            "MedicationRequest",
            ("authoredOn",),
            code="medicationCodeableConcept",
            search_key="medicationRequests",
            clinical_time=("authoredOn",),
            include="MedicationRequest:medication",
        ),
        _kind(
            "MedicationAdministration",
            ("effectiveDateTime", "effectivePeriod"),
            code="medicationCodeableConcept",
            search_key="medicationAdministrations",
            clinical_time=("effective[x]",),
            include="MedicationAdministration:medication",
        ),
        _kind(
            "MedicationStatement",
            ("effectiveDateTime", "effectivePeriod", "dateAsserted"),
            code="medicationCodeableConcept",
            search_key="medicationStatements",
            clinical_time=("effective[x]", "dateAsserted"),
            include="MedicationStatement:medication",
        ),
        _kind(
            "MedicationDispense",
            ("whenHandedOver", "whenPrepared"),
            code="medicationCodeableConcept",
            search_key="medicationDispenses",
            clinical_time=("whenHandedOver", "whenPrepared"),
            include="MedicationDispense:medication",
        ),
        _kind("Medication", (), subject=(), patient_param=None),
    )
}

# The types a rule reads, besides the Patient (what the record builder keeps, in this order).
EVALUATED: tuple[str, ...] = tuple(
    name for name, k in KINDS.items() if k.evaluated and name != "Patient"
)


# Read when a protocol has a rule that reads them (service.relevance derives it).
MEDICATION_TYPES: tuple[str, ...] = (
    "MedicationRequest",
    "MedicationAdministration",
    "MedicationStatement",
    "MedicationDispense",
)
# Types a rule may read beyond EVALUATED: only when a criterion's rule names them.
ON_DEMAND: tuple[str, ...] = MEDICATION_TYPES


def kind(rtype: str) -> ResourceKind | None:
    return KINDS.get(rtype)


def subject_element(rtype: str) -> str | None:
    """The element naming the patient of an evaluated type (None: not one we evaluate)."""
    k = KINDS.get(rtype)
    return k.subject[0] if k is not None and k.evaluated and k.subject else None
