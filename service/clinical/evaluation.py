"""The result of evaluating one patient against one protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from service.clinical.model import CriterionResult, Issue, Outcome, SourceRef


class SubjectStatus(StrEnum):
    """ResearchSubject.status codes we produce (http://hl7.org/fhir/research-subject-status)."""

    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"
    POTENTIAL_CANDIDATE = "potential-candidate"


@dataclass(slots=True)
class Evaluation:
    patient_id: str  # the logical id (or fullUrl for id-less Patients)
    patient_reference: str  # "Patient/{id}" (or the fullUrl)
    as_of: date
    evaluated_at: datetime
    results: list[CriterionResult]  # top-level criteria in protocol order, members nested
    issues: list[Issue] = field(default_factory=list)
    sources: list[SourceRef] = field(default_factory=list)  # every source resource used
    # Site ConceptMaps (service.terminology MapSource: url, version) that mapped evidence.
    conceptmaps: list = field(default_factory=list)

    @property
    def status(self) -> SubjectStatus:
        """Eligible only when every criterion is met; any not-met makes the subject ineligible."""
        outcomes = {r.outcome for r in self.results}
        if Outcome.NOT_MET in outcomes:
            return SubjectStatus.INELIGIBLE
        if outcomes == {Outcome.MET}:
            return SubjectStatus.ELIGIBLE
        return SubjectStatus.POTENTIAL_CANDIDATE

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)
