"""The vocabulary of an evaluation: outcomes, evidence, issues and criterion results."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    MET = "met"
    NOT_MET = "not-met"
    UNDETERMINED = "undetermined"


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFORMATION = "information"


@dataclass(frozen=True, slots=True)
class Issue:
    """Something the coordinator should know about the input (becomes an OperationOutcome issue)."""

    severity: Severity
    code: str  # an OperationOutcome issue-type code: "invalid", "not-supported", "value", ...
    message: str
    expression: str | None = None  # a reference such as "Observation/123", never PHI


@dataclass(frozen=True, slots=True)
class SourceRef:
    """A source resource used as evidence, by the reference the output should carry."""

    reference: str  # "Observation/abc", or the entry's fullUrl for id-less resources
    resource_type: str


@dataclass(frozen=True, slots=True)
class DataRequirement:
    """Data that would resolve an undetermined criterion (GuidanceResponse.dataRequirement)."""

    resource_type: str  # "Observation", "QuestionnaireResponse", "Consent", ...
    valueset: str | None = None  # canonical URL of the ValueSet that would resolve it
    description: str = ""
    path: str = "code"  # the element the ValueSet constrains (Consent: "scope")


@dataclass(slots=True)
class CriterionResult:
    code: str  # "I1" .. "I12", or a member code such as "I6-bilirubin"
    outcome: Outcome
    reason: str  # plain words: value used, its date, converted value, threshold, why
    evidence: list[SourceRef] = field(default_factory=list)
    members: list[CriterionResult] = field(default_factory=list)
    needs: list[DataRequirement] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


def met(code: str, reason: str, evidence: list[SourceRef] | None = None) -> CriterionResult:
    return CriterionResult(code, Outcome.MET, reason, evidence or [])


def not_met(code: str, reason: str, evidence: list[SourceRef] | None = None) -> CriterionResult:
    return CriterionResult(code, Outcome.NOT_MET, reason, evidence or [])


def undetermined(
    code: str,
    reason: str,
    evidence: list[SourceRef] | None = None,
    needs: list[DataRequirement] | None = None,
) -> CriterionResult:
    return CriterionResult(code, Outcome.UNDETERMINED, reason, evidence or [], needs=needs or [])
