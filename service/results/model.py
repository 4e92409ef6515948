"""One patient's standing in one study, as the worklist and change detection need it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from service.clinical.evaluation import Evaluation
from service.clinical.model import Outcome


@dataclass(frozen=True, slots=True)
class StudyResult:
    """The newest evaluation of one patient against one study (no PHI beyond the id)."""

    patient_id: str
    study_id: str
    status: str  # ResearchSubject.status: eligible / ineligible / potential-candidate
    evaluated_at: datetime
    as_of: str  # the evaluation date (ISO)
    source: str  # "screening", "api", "cds", "subscription", "app"
    open_criteria: tuple[str, ...] = ()  # undetermined criterion codes, protocol order
    failed_criteria: tuple[str, ...] = ()  # not-met criterion codes
    # resource reference -> versionId (or lastUpdated) the evaluation read: idempotence
    versions: dict[str, str] = field(default_factory=dict)
    previous_status: str | None = None  # set by ResultStore.record when the status changed
    changed_at: datetime | None = None
    change: str | None = None  # what changed, in words ("potential-candidate -> eligible: ...")

    @property
    def key(self) -> tuple[str, str]:
        return self.patient_id, self.study_id


def summarise(
    evaluation: Evaluation, study_id: str, source: str, versions: dict[str, str] | None = None
) -> StudyResult:
    """The worklist's view of one evaluation."""
    results = evaluation.results
    return StudyResult(
        patient_id=evaluation.patient_id,
        study_id=study_id,
        status=str(evaluation.status),
        evaluated_at=evaluation.evaluated_at,
        as_of=evaluation.as_of.isoformat(),
        source=source,
        open_criteria=tuple(r.code for r in results if r.outcome is Outcome.UNDETERMINED),
        failed_criteria=tuple(r.code for r in results if r.outcome is Outcome.NOT_MET),
        versions=dict(versions or {}),
    )


def with_change(new: StudyResult, old: StudyResult | None) -> StudyResult:
    """``new``, marked as a change when its status differs from ``old``'s (a first answer is
    not a change); an unchanged status keeps the last change for the worklist."""
    if old is None:
        return new
    if old.status == new.status:
        return replace(
            new, previous_status=old.previous_status, changed_at=old.changed_at, change=old.change
        )
    words = [f"{old.status} -> {new.status}"]
    newly_failed = [c for c in new.failed_criteria if c not in old.failed_criteria]
    resolved = [c for c in old.open_criteria if c not in new.open_criteria]
    if newly_failed:
        words.append("now not met: " + ", ".join(newly_failed))
    if resolved:
        words.append("resolved: " + ", ".join(resolved))
    return replace(
        new, previous_status=old.status, changed_at=new.evaluated_at, change="; ".join(words)
    )
