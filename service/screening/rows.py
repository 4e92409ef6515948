"""One worklist row per patient, derived from an Evaluation (or from a failure).

The columns are fixed by the protocol: ``patient``, ``status``, every criterion code (top
level first, then panel members, in protocol order), ``blocking``, ``needed``, ``error``.
"""

from __future__ import annotations

from collections.abc import Iterator

from service.clinical.evaluation import Evaluation
from service.clinical.model import CriterionResult, Outcome
from service.protocol import Protocol

ERROR_STATUS = "error"
SEPARATOR = "; "


def criterion_columns(protocol: Protocol) -> list[str]:
    """Top-level criteria in protocol order, then the panel members in protocol order."""
    top = [c.code for c in protocol.criteria.values() if not c.is_member]
    members = [c.code for c in protocol.criteria.values() if c.is_member]
    return top + members


def header(protocol: Protocol) -> list[str]:
    return ["patient", "status", *criterion_columns(protocol), "blocking", "needed", "error"]


def _walk(results: list[CriterionResult]) -> Iterator[CriterionResult]:
    for result in results:
        yield result
        yield from _walk(result.members)


def evaluation_row(evaluation: Evaluation, protocol: Protocol) -> list[str]:
    """The row of an evaluated patient; ``needed`` names data, never patient values."""
    outcomes = {r.code: r for r in _walk(evaluation.results)}
    codes = criterion_columns(protocol)
    blocking = [c for c in codes if c in outcomes and outcomes[c].outcome is Outcome.NOT_MET]
    needed: dict[str, None] = {}
    for code in codes:
        result = outcomes.get(code)
        if result is None or result.outcome is not Outcome.UNDETERMINED:
            continue
        for need in result.needs:
            text = need.description or need.resource_type
            needed.setdefault(text.replace("\n", " "), None)
    return [
        evaluation.patient_id,
        evaluation.status.value,
        *(outcomes[c].outcome.value if c in outcomes else "" for c in codes),
        " ".join(blocking),
        SEPARATOR.join(needed),
        "",
    ]


def error_row(patient_id: str, message: str, protocol: Protocol) -> list[str]:
    """A patient that could not be evaluated: kept in the worklist, never dropped."""
    blanks = [""] * len(criterion_columns(protocol))
    return [patient_id, ERROR_STATUS, *blanks, "", "", message.replace("\n", " ")]


class Layout:
    """The worklist's columns for the studies of one screening run.

    One study: exactly the columns above (the file is byte-for-byte today's). Several: a
    ``study`` column first (the protocol id), then ``patient``, ``status``, the *union* of
    the studies' criterion columns (each study's order, first seen first; a code two studies
    share is one column, read with the row's ``study``; a code the row's study lacks is
    blank), ``blocking``, ``needed``, ``error``: one row per patient and study.
    """

    def __init__(self, protocols: list[Protocol]) -> None:
        self.protocols = protocols
        self.multi = len(protocols) > 1
        if self.multi:
            codes: dict[str, None] = {}
            for protocol in protocols:
                codes.update(dict.fromkeys(criterion_columns(protocol)))
            self.codes = list(codes)
            self.header = ["study", "patient", "status", *self.codes, "blocking", "needed", "error"]
        else:
            self.codes = criterion_columns(protocols[0])
            self.header = header(protocols[0])
        self.patient_at = 1 if self.multi else 0
        self.status_at = self.patient_at + 1

    def place(self, row: list[str], protocol: Protocol) -> list[str]:
        """A study's own row (``evaluation_row`` / ``error_row``) in this layout."""
        if not self.multi:
            return row
        own = criterion_columns(protocol)
        values = dict(zip(own, row[2 : 2 + len(own)], strict=True))
        return [protocol.id, row[0], row[1], *(values.get(c, "") for c in self.codes), *row[-3:]]

    def row(self, evaluation: Evaluation, protocol: Protocol) -> list[str]:
        return self.place(evaluation_row(evaluation, protocol), protocol)

    def error(self, patient_id: str, message: str, protocol: Protocol) -> list[str]:
        return self.place(error_row(patient_id, message, protocol), protocol)

    def key(self, row: list[str]) -> tuple[str, str]:
        """(study id, patient id) of a row in this layout."""
        study = row[0] if self.multi else self.protocols[0].id
        return study, row[self.patient_at]
