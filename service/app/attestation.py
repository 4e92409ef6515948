"""The attestation form, read from the protocol's Questionnaire, and the response it writes.

Nothing here names a criterion: each item comes from the Questionnaire (its linkId, text and
type), and the criterion it settles is the one whose ``attestation_item`` in protocol.toml is
that linkId. An item is required when its criterion is still open or not met (contradicted);
an item whose criterion is already met may be left blank.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.app.view import NOTE_EXTENSION
from service.clinical.evaluation import Evaluation
from service.clinical.model import CriterionResult, Outcome
from service.protocol import Protocol

COMMENT_PREFIX = "comment."
MAX_COMMENT = 1000
IDENTIFIER_SYSTEM = "urn:ietf:rfc:3986"
_UUID = re.compile(r"[0-9a-f]{32}")


@dataclass
class FormItem:
    link_id: str
    text: str
    kind: str  # "boolean", "display", "group" or "unsupported"
    required: bool = False
    criterion: str | None = None
    current: str | None = None  # met | not-met | undetermined, for the linked criterion
    current_reason: str | None = None
    children: list[FormItem] = field(default_factory=list)

    @property
    def comment_name(self) -> str:
        return COMMENT_PREFIX + self.link_id


@dataclass
class FormModel:
    title: str
    items: list[FormItem]

    def answerable(self) -> Iterator[FormItem]:
        stack = list(self.items)
        while stack:
            item = stack.pop(0)
            if item.kind == "boolean":
                yield item
            stack[:0] = item.children


def _results_by_code(evaluation: Evaluation) -> dict[str, CriterionResult]:
    found: dict[str, CriterionResult] = {}
    for result in evaluation.results:
        found[result.code] = result
        for member in result.members:
            found[member.code] = member
    return found


def build_form(protocol: Protocol, evaluation: Evaluation) -> FormModel:
    """The form for this patient: every item of the Questionnaire, with what is required."""
    item_to_criterion = {
        c.params["attestation_item"]: c.code
        for c in protocol.criteria.values()
        if "attestation_item" in c.params
    }
    results = _results_by_code(evaluation)

    def convert(raw: dict[str, Any]) -> FormItem:
        link_id = str(raw.get("linkId", ""))
        kind = raw.get("type")
        item = FormItem(link_id=link_id, text=str(raw.get("text") or link_id), kind="unsupported")
        if kind == "boolean":
            item.kind = "boolean"
            code = item_to_criterion.get(link_id)
            result = results.get(code) if code else None
            if result is not None:
                item.criterion = code
                item.current = result.outcome.value
                item.current_reason = result.reason
                item.required = result.outcome is not Outcome.MET
            else:
                item.required = bool(raw.get("required"))
        elif kind in ("display", "group"):
            item.kind = kind
        item.children = [convert(c) for c in raw.get("item") or () if isinstance(c, dict)]
        return item

    items = [convert(i) for i in protocol.questionnaire.get("item") or () if isinstance(i, dict)]
    title = str(protocol.questionnaire.get("title") or protocol.questionnaire.get("name") or "")
    return FormModel(title, items)


@dataclass
class Submission:
    answers: dict[str, bool]
    comments: dict[str, str]
    errors: dict[str, str]  # linkId (or "" for the form) -> message


def read_submission(form: FormModel, data: Mapping[str, Any]) -> Submission:
    """The answers posted for the form's items; missing required answers are errors."""
    answers: dict[str, bool] = {}
    comments: dict[str, str] = {}
    errors: dict[str, str] = {}
    for item in form.answerable():
        raw = data.get(item.link_id)
        if raw in ("true", "false"):
            answers[item.link_id] = raw == "true"
        elif raw not in (None, ""):
            errors[item.link_id] = "Answer yes or no."
        elif item.required:
            errors[item.link_id] = "This item is still open: answer yes or no."
        comment = data.get(item.comment_name)
        if isinstance(comment, str) and comment.strip():
            if len(comment) > MAX_COMMENT:
                errors[item.link_id] = f"The comment is longer than {MAX_COMMENT} characters."
            comments[item.link_id] = comment.strip()
    for link_id in comments:
        if link_id not in answers and link_id not in errors:
            errors[link_id] = "A comment needs a yes or no answer."
    if not answers and not errors:
        errors[""] = "Answer at least one item."
    return Submission(answers, comments, errors)


def valid_submission_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_UUID.fullmatch(value))


def submission_identifier(submission_id: str) -> tuple[str, str]:
    """(system, value) of the response's identifier: the form's one-time submission key."""
    return IDENTIFIER_SYSTEM, f"urn:uuid:{submission_id[:8]}-{submission_id[8:12]}-" + (
        f"{submission_id[12:16]}-{submission_id[16:20]}-{submission_id[20:]}"
    )


def questionnaire_response(
    protocol: Protocol,
    form: FormModel,
    submission: Submission,
    *,
    patient_id: str,
    author: dict[str, str],
    submission_id: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A completed QuestionnaireResponse to ``canonical|version``, authored now by ``author``."""
    questionnaire = protocol.questionnaire
    canonical = questionnaire["url"]
    if questionnaire.get("version"):
        canonical = f"{canonical}|{questionnaire['version']}"
    system, value = submission_identifier(submission_id)

    def answered(form_items: list[FormItem]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in form_items:
            if item.kind == "boolean" and item.link_id in submission.answers:
                entry: dict[str, Any] = {
                    "linkId": item.link_id,
                    "text": item.text,
                    "answer": [{"valueBoolean": submission.answers[item.link_id]}],
                }
                comment = submission.comments.get(item.link_id)
                if comment:
                    note = {"url": NOTE_EXTENSION, "valueAnnotation": {"text": comment}}
                    entry["extension"] = [note]
                out.append(entry)
            elif item.kind == "group":
                inner = answered(item.children)
                if inner:
                    out.append({"linkId": item.link_id, "text": item.text, "item": inner})
        return out

    items = answered(form.items)
    moment = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    return {
        "resourceType": "QuestionnaireResponse",
        "identifier": {"system": system, "value": value},
        "questionnaire": canonical,
        "status": "completed",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authored": moment,
        "author": author,
        "item": items,
    }
