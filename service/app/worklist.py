"""The coordinator's worklist: one row per patient and study, filtered, sorted and paged by
the ResultStore (server side: thousands of rows never reach the page at once).

Query parameters: ``study`` and ``status`` (repeatable), ``sort`` (evaluated, status,
patient, open), ``order`` (asc, desc), ``page`` (from 1), ``size``. A bad value is an error
the page names, never a silent default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from service.app.view import STATUS_TEXT
from service.cds.cards import trial_name
from service.clinical.evaluation import SubjectStatus
from service.errors import InputError
from service.portfolio import Portfolio
from service.protocol import Protocol
from service.results import ResultStore, StudyResult

SORTS = {"evaluated": "evaluated_at", "status": "status", "patient": "patient_id", "open": "open"}
STATUSES = [s.value for s in SubjectStatus]
MAX_SIZE = 500


class WorklistError(InputError):
    """A query parameter the worklist cannot use (the page says which)."""


@dataclass(frozen=True)
class WorklistQuery:
    studies: tuple[str, ...] = ()  # protocol ids; empty: every loaded study
    statuses: tuple[str, ...] = ()  # empty: every status
    sort: str = "evaluated"
    descending: bool = True
    page: int = 1
    size: int = 50

    def url(self, **change: object) -> str:
        """This query with some parameters changed, as a worklist link."""
        values = {
            "study": list(self.studies),
            "status": list(self.statuses),
            "sort": self.sort,
            "order": "desc" if self.descending else "asc",
            "page": self.page,
            "size": self.size,
        }
        values.update(change)
        return "/app/?" + urlencode(values, doseq=True)


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise WorklistError(f"{name} is given more than once")
    return values[0].strip() if values else None


def _positive(text: str | None, name: str, default: int, limit: int) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or not 1 <= int(text) <= limit:
        raise WorklistError(f"{name} must be a whole number from 1 to {limit}")
    return int(text)


def parse_query(
    params: Mapping[str, Sequence[str]], portfolio: Portfolio, default_size: int
) -> WorklistQuery:
    """Read the query string; studies may be named by id, canonical or registry number."""
    studies: list[str] = []
    for name in params.get("study") or []:
        if not name.strip():
            continue
        try:
            study_id = portfolio.get(name).id
        except KeyError as exc:
            raise WorklistError(str(exc.args[0])) from None
        if study_id not in studies:
            studies.append(study_id)
    statuses = [s.strip() for s in params.get("status") or [] if s.strip()]
    for status in statuses:
        if status not in STATUSES:
            raise WorklistError(f"status must be one of {', '.join(STATUSES)}")
    sort = _one(params, "sort") or "evaluated"
    if sort not in SORTS:
        raise WorklistError(f"sort must be one of {', '.join(SORTS)}")
    order = _one(params, "order") or ("asc" if sort == "patient" else "desc")
    if order not in ("asc", "desc"):
        raise WorklistError("order must be asc or desc")
    size = _positive(_one(params, "size"), "size", min(default_size, MAX_SIZE), MAX_SIZE)
    page = _positive(_one(params, "page"), "page", 1, 10**6)
    return WorklistQuery(
        tuple(studies), tuple(dict.fromkeys(statuses)), sort, order == "desc", page, size
    )


@dataclass
class OpenCriterion:
    code: str
    title: str


@dataclass
class WorklistRow:
    patient_id: str
    study_id: str
    study_name: str
    status: str
    status_text: str
    open_criteria: list[OpenCriterion]
    failed: list[str]
    evaluated_at: str  # "2026-11-20 09:00 UTC"
    source: str
    change: str | None
    changed_at: str | None
    review_url: str
    patient_url: str


@dataclass
class Worklist:
    query: WorklistQuery
    rows: list[WorklistRow]
    total: int
    pages: int
    studies: list[tuple[str, str]]  # (id, name) of every loaded study, for the filter
    statuses: list[tuple[str, str]] = field(default_factory=list)


def _when(result: StudyResult, attr: str = "evaluated_at") -> str | None:
    value = getattr(result, attr)
    if value is None:
        return None
    return value.strftime("%Y-%m-%d %H:%M %Z").strip()


def worklist_row(result: StudyResult, protocol: Protocol) -> WorklistRow:
    return WorklistRow(
        patient_id=result.patient_id,
        study_id=result.study_id,
        study_name=trial_name(protocol),
        status=result.status,
        status_text=STATUS_TEXT.get(SubjectStatus(result.status), result.status)
        if result.status in STATUSES
        else result.status,
        open_criteria=[
            OpenCriterion(c, protocol.criterion_display(c)) for c in result.open_criteria
        ],
        failed=list(result.failed_criteria),
        evaluated_at=_when(result) or "",
        source=result.source,
        change=result.change,
        changed_at=_when(result, "changed_at"),
        review_url=f"/app/patients/{result.patient_id}?{urlencode({'study': result.study_id})}",
        patient_url=f"/app/patients/{result.patient_id}/studies",
    )


async def load_worklist(store: ResultStore, portfolio: Portfolio, query: WorklistQuery) -> Worklist:
    """One page of the worklist, from the store, for the loaded studies only."""
    by_id = {p.id: p for p in portfolio}
    studies = list(query.studies) or list(by_id)
    page, total = await store.query(
        study_ids=studies,
        statuses=list(query.statuses) or None,
        sort=SORTS[query.sort],
        descending=query.descending,
        offset=(query.page - 1) * query.size,
        limit=query.size,
    )
    return Worklist(
        query=query,
        rows=[worklist_row(r, by_id[r.study_id]) for r in page],
        total=total,
        pages=max(1, math.ceil(total / query.size)),
        studies=[(p.id, trial_name(p)) for p in portfolio],
        statuses=[(s, STATUS_TEXT[SubjectStatus(s)]) for s in STATUSES],
    )
