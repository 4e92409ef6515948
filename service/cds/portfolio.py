"""CDS Hooks for several studies at once: one prefetch, one evaluation pass, a card per study.

The prefetch templates are the union over the studies, each template once: a query two
studies share is advertised (and read) once, and a key two studies use for different
searches gets the study id appended for the later one. ``PrefetchPlan.keys`` maps each
study's own query keys to the advertised ones, so every study reads exactly the data it
reads alone (service.cds.prefetch).

Cards: one per study in which the patient is eligible or a potential candidate (ineligible
studies too with ``cds_show_ineligible``), eligible first, then fewest open criteria, at
most ``cds_max_cards``; the last card shown links to the patient's page for the others.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from service.cds.cards import markdown_line, patient_view_cards, trial_name
from service.clinical.evaluation import Evaluation, SubjectStatus
from service.clinical.model import CriterionResult, Outcome
from service.criterion_kind import is_exclusion
from service.protocol import Protocol
from service.relevance import Relevance
from service.settings import Settings

PORTFOLIO_SERVICE_ID = "trials-screening"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_LINE_MAX = 200


@dataclass(frozen=True)
class PrefetchPlan:
    templates: dict[str, str]  # advertised key -> template, each template once
    keys: list[dict[str, str]]  # per study (in order): its query key -> advertised key

    def queries(self, n: int) -> dict[str, tuple[str, str]]:
        """Study ``n``'s query keys -> (advertised key, resource type)."""
        return {
            own: (shared, _resource_type(self.templates[shared]))
            for own, shared in self.keys[n].items()
        }


def _resource_type(template: str) -> str:
    return template.split("?", 1)[0].split("/", 1)[0]


def prefetch_plan(relevances: Sequence[Relevance]) -> PrefetchPlan:
    """The union of the studies' prefetch templates, no key and no template twice (computed
    once per set of selections: every CDS call of the portfolio service reads it)."""
    return _plan(tuple(relevances))


@lru_cache(maxsize=32)
def _plan(relevances: tuple[Relevance, ...]) -> PrefetchPlan:
    templates: dict[str, str] = {}
    by_template: dict[str, str] = {}
    keys: list[dict[str, str]] = []
    for relevance in relevances:
        own: dict[str, str] = {}
        for key, template in relevance.prefetch_templates().items():
            shared = by_template.get(template)
            if shared is None:
                shared = key
                n = 1
                while shared in templates:  # the same key for another search
                    suffix = relevance.protocol.id if n == 1 else f"{relevance.protocol.id}-{n}"
                    shared, n = f"{key}-{suffix}", n + 1
                templates[shared] = template
                by_template[template] = shared
            own[key] = shared
        keys.append(own)
    return PrefetchPlan(templates, keys)


# -- cards ----------------------------------------------------------------------------------
def _open(evaluation: Evaluation) -> list[CriterionResult]:
    return [r for r in evaluation.results if r.outcome is Outcome.UNDETERMINED]


def missing_line(evaluation: Evaluation, protocol: Protocol) -> str:
    """What is missing for this study, in one line (plain text, shortened to fit)."""
    if evaluation.status is SubjectStatus.ELIGIBLE:
        return "Nothing missing: every criterion is met."
    if evaluation.status is SubjectStatus.INELIGIBLE:
        failed = [r.code for r in evaluation.results if r.outcome is Outcome.NOT_MET]
        words = [
            f"exclusion {c} applies" if is_exclusion(protocol, c) else f"{c} not met"
            for c in failed
        ]
        return _cut("Not eligible: " + "; ".join(words) + ".")
    names = [f"{r.code} {_title(protocol, r.code)}" for r in _open(evaluation)]
    return _cut("Missing: " + "; ".join(names) + ".")


def _title(protocol: Protocol, code: str) -> str:
    try:
        return protocol.criterion_display(code)
    except KeyError:
        return ""


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _LINE_MAX else text[: _LINE_MAX - 1].rstrip() + "…"


def review_link(
    evaluation: Evaluation, protocol: Protocol, settings: Settings, service_base_url: str
) -> dict[str, Any]:
    """The study's review page (``?study=<id>``), or a SMART launch naming the study."""
    label = f"Review {trial_name(protocol)}"
    if settings.app_smart_launch_url:
        context = json.dumps({"study": protocol.versioned_canonical, "studyId": protocol.id})
        return {
            "label": label,
            "url": settings.app_smart_launch_url,
            "type": "smart",
            "appContext": context,
        }
    return {"label": label, "url": _patient_page(evaluation, service_base_url, protocol.id)}


def _patient_page(evaluation: Evaluation, base: str, study: str | None = None) -> str:
    pid = evaluation.patient_id
    path = f"/app/patients/{pid}" if _FHIR_ID.fullmatch(pid) else "/app/"
    query = f"?study={study}" if study and _FHIR_ID.fullmatch(study) else ""
    return f"{base.rstrip('/')}{path}{query}"


def study_card(
    evaluation: Evaluation, protocol: Protocol, settings: Settings, service_base_url: str
) -> dict[str, Any] | None:
    """The study's card as the single-study service shows it, plus the missing line (first
    in the detail) and a link to this study's review; None when it shows no card."""
    cards = patient_view_cards(evaluation, protocol, settings, service_base_url=service_base_url)[
        "cards"
    ]
    if not cards:
        return None
    card = cards[0]
    card["detail"] = f"{markdown_line(missing_line(evaluation, protocol))}\n\n{card['detail']}"
    link = review_link(evaluation, protocol, settings, service_base_url)
    if link.get("type") != "smart":
        link["type"] = "absolute"
    others = [x for x in card.get("links", ()) if x.get("label") != link["label"]]
    # the attestation link, if any, now opens this study's review as well
    for other in others:
        if other.get("type") == "absolute":
            other["url"] = link["url"]
        elif other.get("type") == "smart":
            other["appContext"] = link.get("appContext", other.get("appContext"))
    card["links"] = [link, *others]
    return card


def rank(
    answers: Sequence[tuple[Protocol, Evaluation, dict[str, Any]]],
) -> list[tuple[Protocol, Evaluation, dict[str, Any]]]:
    """Eligible first, then fewest open criteria; the portfolio's order breaks ties."""
    order = {SubjectStatus.ELIGIBLE: 0, SubjectStatus.POTENTIAL_CANDIDATE: 1}

    def key(item: tuple[int, tuple[Protocol, Evaluation, dict[str, Any]]]) -> tuple[int, ...]:
        n, (_, evaluation, _) = item
        return (order.get(evaluation.status, 2), len(_open(evaluation)), n)

    return [a for _, a in sorted(enumerate(answers), key=key)]


def capped(
    ranked: Sequence[tuple[Protocol, Evaluation, dict[str, Any]]],
    limit: int,
    service_base_url: str,
) -> list[dict[str, Any]]:
    """At most ``limit`` cards; the last shown links to the patient's page for the rest."""
    cards = [card for _, _, card in ranked]
    if limit < 1 or len(cards) <= limit:
        return cards
    shown, hidden = cards[:limit], len(cards) - limit
    evaluation = ranked[0][1]
    more = {
        "label": f"and {hidden} more trial{'s' if hidden != 1 else ''}",
        "url": _patient_page(evaluation, service_base_url),
        "type": "absolute",
    }
    shown[-1] = {**shown[-1], "links": [*shown[-1].get("links", ()), more]}
    return shown
