"""Turn one Evaluation into the CDS Hooks ``patient-view`` response.

Everything trial-specific (names, criterion titles, URLs, which criteria are investigator
attestations) comes from the Protocol, so a second trial gets its own cards without code changes.
The card is screening advice only: the suggestion records a *potential candidate*, never an
enrolment, and the clinician must pick it.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from service.clinical.evaluation import Evaluation, SubjectStatus
from service.clinical.model import CriterionResult, Outcome
from service.criterion_kind import EXCLUSION_TEXT, is_exclusion
from service.ops.card_feedback import override_reasons
from service.protocol import Protocol
from service.settings import Settings

SUMMARY_MAX = 139  # the spec asks for "<140 characters"
_ELLIPSIS = "…"
_LABEL_EXTENSION_SUFFIX = "extension-ResearchStudy.label"  # R5 ResearchStudy.label for R4
_SHORT_TITLE_TYPES = {"short-title", "acronym"}
OUTCOME_TEXT = {  # shared with the web app: both say the same words
    Outcome.MET: "Met",
    Outcome.NOT_MET: "Not met",
    Outcome.UNDETERMINED: "Undetermined",
}
_STATUS_TEXT = {
    SubjectStatus.ELIGIBLE: "all criteria met",
    SubjectStatus.POTENTIAL_CANDIDATE: "possible candidate, review needed",
    SubjectStatus.INELIGIBLE: "not eligible",
}
# GFM punctuation that could start emphasis, code, links, tables, raw HTML or entities mid-line.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # the only patient datum a link may carry
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&])")


def patient_view_cards(
    evaluation: Evaluation, protocol: Protocol, settings: Settings, *, service_base_url: str
) -> dict[str, Any]:
    """``{"cards": [...]}``: one card when the patient may fit the trial, else no cards.

    ``service_base_url`` (our own public base URL) is recorded as ``meta.source`` of the
    suggested ResearchSubject, so the EHR can tell where that record came from.
    """
    status = evaluation.status
    if status is SubjectStatus.INELIGIBLE and not settings.cds_show_ineligible:
        return {"cards": []}

    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(evaluation, protocol),
        "indicator": (
            settings.cds_eligible_indicator if status is SubjectStatus.ELIGIBLE else "info"
        ),
        "detail": _detail(evaluation, protocol),
        "source": _source(protocol),
        # Dismissing with one of these hides the card until the result changes (issue 11).
        "overrideReasons": [dict(reason) for reason in override_reasons()],
    }
    if status is not SubjectStatus.INELIGIBLE:
        card["suggestions"] = [_record_candidate(evaluation, protocol, service_base_url)]
        card["selectionBehavior"] = "at-most-one"
        if _attestation_pending(evaluation, protocol):
            card["links"] = [_attestation_link(evaluation, protocol, settings, service_base_url)]
    return {"cards": [card]}


def _attestation_link(
    evaluation: Evaluation, protocol: Protocol, settings: Settings, service_base_url: str
) -> dict[str, Any]:
    """A SMART launch of the web app (naming the study) when configured, else its review page."""
    label = "Complete investigator attestation"
    if settings.app_smart_launch_url:
        context = json.dumps({"study": protocol.versioned_canonical})
        return {
            "label": label,
            "url": settings.app_smart_launch_url,
            "type": "smart",
            "appContext": context,
        }
    pid = evaluation.patient_id
    path = f"/app/patients/{pid}" if _FHIR_ID.fullmatch(pid) else "/app/"
    return {"label": label, "url": f"{service_base_url.rstrip('/')}{path}", "type": "absolute"}


# -- names ----------------------------------------------------------------------
def trial_name(protocol: Protocol) -> str:
    """A short display name: the study's short title if the data has one, else its title.

    Looked up in order: the R5 ``ResearchStudy.label`` cross-version extension with type
    short-title/acronym, ``[general] short_title`` in the protocol file, ``ResearchStudy.title``,
    then the protocol id.
    """
    study = protocol.research_study
    for ext in study.get("extension", []):
        if not str(ext.get("url", "")).endswith(_LABEL_EXTENSION_SUFFIX):
            continue
        parts = {sub.get("url"): sub for sub in ext.get("extension", [])}
        codes = {
            c.get("code")
            for c in parts.get("type", {}).get("valueCodeableConcept", {}).get("coding", [])
        }
        value = parts.get("value", {}).get("valueString")
        if value and codes & _SHORT_TITLE_TYPES:
            return _one_line(value)
    for candidate in (protocol.general.get("short_title"), study.get("title"), protocol.id):
        if isinstance(candidate, str) and candidate.strip():
            return _one_line(candidate)
    return protocol.id


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fit(prefix: str, name: str, suffix: str, limit: int = SUMMARY_MAX) -> str:
    """``prefix + name + suffix`` within ``limit`` characters, shortening only the name."""
    room = limit - len(prefix) - len(suffix)
    if len(name) > room:
        cut = name[: max(room - len(_ELLIPSIS), 0)]
        space = cut.rfind(" ")
        if space >= len(cut) - 20:  # end on a whole word when that costs little
            cut = cut[:space]
        name = cut.rstrip(" ,;:-") + _ELLIPSIS
    return (prefix + name + suffix)[:limit]


# -- summary and detail -------------------------------------------------------
def _summary(evaluation: Evaluation, protocol: Protocol) -> str:
    name = trial_name(protocol)
    total = len(evaluation.results)
    met = evaluation.count(Outcome.MET)
    not_met = evaluation.count(Outcome.NOT_MET)
    undetermined = evaluation.count(Outcome.UNDETERMINED)
    match evaluation.status:
        case SubjectStatus.ELIGIBLE:
            return _fit(f"Meets all {total} inclusion criteria of ", name, "")
        case SubjectStatus.POTENTIAL_CANDIDATE:
            counts = f": {met} of {total} criteria met, {undetermined} need review"
            return _fit("Possible candidate for ", name, counts)
        case _:
            applying = [
                r.code
                for r in evaluation.results
                if r.outcome is Outcome.NOT_MET and is_exclusion(protocol, r.code)
            ]
            if applying and len(applying) == not_met:
                counts = f": exclusion {', '.join(applying)} applies"
            else:
                counts = f": {not_met} of {total} criteria not met"
            return _fit("Not eligible for ", name, counts)


def markdown_line(text: str) -> str:
    """Plain text made safe for GitHub Markdown: one line, markup characters escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _one_line(text))


def _display(protocol: Protocol, code: str) -> str:
    try:
        return protocol.criterion_display(code)
    except KeyError:  # a result the protocol does not define: show the code, don't fail the hook
        return code


def _criterion_lines(result: CriterionResult, protocol: Protocol, depth: int) -> list[str]:
    indent = "  " * depth
    title = markdown_line(_display(protocol, result.code))
    if is_exclusion(protocol, result.code) and result.outcome is Outcome.NOT_MET:
        # "not met" on an exclusion reads the wrong way round: say that it applies.
        line = f"{indent}- **Exclusion {markdown_line(result.code)} applies** — {title}"
    elif is_exclusion(protocol, result.code):
        said = EXCLUSION_TEXT[result.outcome]
        line = f"{indent}- **{said}** — exclusion {markdown_line(result.code)} {title}"
    else:
        line = (
            f"{indent}- **{OUTCOME_TEXT[result.outcome]}** — {markdown_line(result.code)} {title}"
        )
    if result.reason:
        line += f": {markdown_line(result.reason)}"
    lines = [line]
    for member in result.members:
        lines.extend(_criterion_lines(member, protocol, depth + 1))
    return lines


def _detail(evaluation: Evaluation, protocol: Protocol) -> str:
    status = evaluation.status
    counts = ", ".join(
        f"{evaluation.count(o)} {OUTCOME_TEXT[o].lower()}"
        for o in (Outcome.MET, Outcome.NOT_MET, Outcome.UNDETERMINED)
    )
    title = protocol.research_study.get("title") or trial_name(protocol)
    lines = [
        f"**{markdown_line(title)}**",
        "",
        f"Automated screening as of {evaluation.as_of.isoformat()}: "
        f"{_STATUS_TEXT[status]} ({counts}).",
        "",
    ]
    for result in evaluation.results:
        lines.extend(_criterion_lines(result, protocol, 0))
    notes = [issue.message for issue in evaluation.issues if issue.message]
    if notes:
        lines += ["", "Data notes:", ""]
        lines += [f"- {markdown_line(note)}" for note in notes]
    lines += [
        "",
        "_Screening aid only: eligibility must be confirmed by the study investigator._",
    ]
    return "\n".join(lines)


# -- source, suggestion, links ------------------------------------------------
def _source(protocol: Protocol) -> dict[str, Any]:
    source: dict[str, Any] = {"label": trial_name(protocol), "url": protocol.canonical}
    for category in protocol.research_study.get("category", []):
        for coding in category.get("coding", []):
            if coding.get("system") and coding.get("code"):
                topic = {"system": coding["system"], "code": coding["code"]}
                if coding.get("display"):
                    topic["display"] = coding["display"]
                source["topic"] = topic
                return source
    return source


def _record_candidate(
    evaluation: Evaluation, protocol: Protocol, service_base_url: str
) -> dict[str, Any]:
    """A suggestion to create an R4 ResearchSubject with status potential-candidate.

    ``study`` is a literal reference to the study as loaded on the EHR's FHIR server
    (``ResearchStudy/<id>``) plus the canonical URL as a logical identifier, so the link to the
    published protocol survives even where the EHR holds the study under another id.
    """
    study = protocol.research_study
    study_ref: dict[str, Any] = {
        "reference": f"ResearchStudy/{study.get('id', protocol.id)}",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": protocol.canonical},
    }
    if study.get("title"):
        study_ref["display"] = _one_line(study["title"])
    subject: dict[str, Any] = {"resourceType": "ResearchSubject"}
    if service_base_url:
        subject["meta"] = {"source": service_base_url}
    subject |= {
        "status": SubjectStatus.POTENTIAL_CANDIDATE.value,
        "study": study_ref,
        "individual": {"reference": evaluation.patient_reference},
    }
    return {
        "label": "Record as screening candidate",
        "uuid": str(uuid.uuid4()),
        "isRecommended": False,  # one suggestion; the clinician decides, we do not pre-select
        "actions": [
            {
                "type": "create",
                "description": _fit(
                    "Record this patient as a potential candidate for ", trial_name(protocol), ""
                ),
                "resource": subject,
            }
        ],
    }


def _attestation_pending(evaluation: Evaluation, protocol: Protocol) -> bool:
    """True when a criterion the investigator answers in the Questionnaire is undetermined."""

    def pending(result: CriterionResult) -> bool:
        definition = protocol.criteria.get(result.code)
        is_attestation = definition is not None and "attestation_item" in definition.params
        if is_attestation and result.outcome is Outcome.UNDETERMINED:
            return True
        return any(pending(m) for m in result.members)

    return any(pending(r) for r in evaluation.results)
