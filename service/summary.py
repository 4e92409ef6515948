"""A readable table of an evaluation, for coordinators at a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.clinical.evaluation import Evaluation
from service.clinical.model import CriterionResult, Outcome
from service.criterion_kind import EXCLUSION_TEXT, is_exclusion
from service.protocol import Protocol

_STYLE = {Outcome.MET: "green", Outcome.NOT_MET: "red", Outcome.UNDETERMINED: "yellow"}


def render_summary(evaluation: Evaluation, protocol: Protocol, console: Console) -> None:
    status = evaluation.status.value
    console.print(
        f"[bold]{evaluation.patient_reference}[/bold] as of {evaluation.as_of}: "
        f"[bold]{status}[/bold] ({evaluation.count(Outcome.MET)} of "
        f"{len(evaluation.results)} criteria met)"
    )
    table = Table(show_lines=False, expand=False)
    table.add_column("Criterion", min_width=16)  # wraps on a narrow terminal
    table.add_column("Result", no_wrap=True)
    table.add_column("Reason", min_width=24, overflow="fold")

    def add(result: CriterionResult, indent: str = "") -> None:
        title = protocol.criterion_display(result.code)
        style = _STYLE[result.outcome]
        word = result.outcome.value
        if is_exclusion(protocol, result.code):  # "not-met" would read the wrong way round
            word = EXCLUSION_TEXT[result.outcome].lower()
        table.add_row(
            escape(f"{indent}{result.code} {title}"),
            f"[{style}]{word}[/{style}]",
            escape(result.reason),
        )
        for member in result.members:
            add(member, indent + "  ")

    for result in evaluation.results:
        add(result)
    console.print(table)
    warnings = [i for i in evaluation.issues]
    if warnings:
        console.print(f"{len(warnings)} warning(s):")
        for issue in warnings:
            where = f"{issue.expression}: " if issue.expression else ""
            console.print(f"  - {where}{issue.message}", markup=False)
