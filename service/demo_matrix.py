"""The demo's patient x trial matrix: one line per demo patient, one column per study.

With several protocols loaded, the per-criterion summary of every patient for every study is
too long to read; the matrix shows at a glance who could join which trial and why not, and
``eligibility demo --study ID`` prints the full summaries of one study.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.clinical.evaluation import SubjectStatus
from service.clinical.model import Outcome
from service.criterion_kind import is_exclusion
from service.portfolio_eval import StudyAnswer

_STYLE = {
    SubjectStatus.ELIGIBLE: "green",
    SubjectStatus.INELIGIBLE: "red",
    SubjectStatus.POTENTIAL_CANDIDATE: "yellow",
}


def cell(answer: StudyAnswer) -> str:
    """'eligible'; 'ineligible: I3; exclusion E2 applies'; 'potential-candidate: 4 open'."""
    evaluation, protocol = answer.evaluation, answer.protocol
    status = evaluation.status
    text = status.value
    if status is SubjectStatus.INELIGIBLE:
        why = [
            f"exclusion {r.code} applies" if is_exclusion(protocol, r.code) else f"{r.code} not met"
            for r in evaluation.results
            if r.outcome is Outcome.NOT_MET
        ]
        text += ": " + "; ".join(why)
    elif status is SubjectStatus.POTENTIAL_CANDIDATE:
        text += f": {evaluation.count(Outcome.UNDETERMINED)} open"
    return f"[{_STYLE[status]}]{escape(text)}[/{_STYLE[status]}]"


def render_matrix(rows: Sequence[tuple[str, Sequence[StudyAnswer]]], console: Console) -> None:
    """``rows``: (patient id, that patient's answers, one per study, in the same study order)."""
    if not rows:
        return
    table = Table(title="Demo patients x trials (as of today)", show_lines=True)
    table.add_column("Patient", no_wrap=True)
    for answer in rows[0][1]:
        table.add_column(escape(answer.protocol.id), overflow="fold")
    for patient_id, answers in rows:
        table.add_row(escape(patient_id), *(cell(a) for a in answers))
    console.print(table)
    console.print(
        "Every criterion with its reason: eligibility demo --study ID "
        "(id, canonical or registry number)"
    )
