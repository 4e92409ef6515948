"""What to ask the FHIR server for one patient, as data derived from the protocol.

The plan is plain data so the same queries serve pull mode (``fetch_patient``) and the
CDS Hooks discovery document (``prefetch_templates``). Every code comes from the
protocol's ValueSets and every window from its criteria; nothing trial-specific lives here.

Observation searches are grouped so a patient costs few round trips:

* ``labs``: value sets read by the numeric lab rules (``lab_*``) through a plain
  ``observation_valueset`` parameter, one search over the longest of their windows;
* one search per other top-level criterion that reads Observations (e.g. CD19
  immunophenotype 90 d, ECOG/Karnofsky 30 d, disease status with no window), keyed by the
  parameter prefix (``ecog_observation_valueset`` -> ``ecog``) or else by the ValueSet id.

Observation searches use ``combo-code`` (R4: ``Observation.code | Observation.component.code``),
not ``code``: a lab that sends a panel as one Observation with components has the analyte's code
only on a component, which a ``code`` search never finds (the engine reads components).

Date filters are one day wider than the window: the server may cut a day in its own time
zone, and the engine applies the exact window anyway. Fetching a superset is safe;
fetching a subset is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import quote

from service.evaluation_context import current_relevance
from service.fhir.errors import InvalidPatientId
from service.protocol import Code, Protocol
from service.relevance import Relevance
from service.resource_kinds import KINDS

PATIENT_TOKEN = "{{context.patientId}}"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_FIXED_KEYS = (
    "labs",
    *(k.search_key for k in KINDS.values() if k.search_key is not None),
    "reports",
    "undated",
)
_LAB_RULE_PREFIX = "lab_"
_OBS_PARAM = "observation_valueset"


@dataclass(frozen=True)
class Query:
    """One FHIR interaction: a Patient read (``read=True``) or a type-level search."""

    key: str  # stable name; also the CDS Hooks prefetch key
    resource_type: str
    params: tuple[tuple[str, str], ...]
    feeds: frozenset[str]  # ValueSet ids (Observation searches) or the resource type name
    read: bool = False  # params are then (("_id", id),)
    # asked instead when the server refuses ``params`` (SearchRefused): a superset search
    fallback: tuple[tuple[str, str], ...] | None = None
    # supporting evidence only (the echo reports a result may take its method from): a
    # server that will not answer it (403: a scope not granted; 400/422/501) leaves it out
    # with a warning; its absence only ever leaves a criterion undetermined
    optional: bool = False

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for name, _ in self.params))

    @property
    def read_id(self) -> str:
        return dict(self.params)["_id"]


@dataclass(frozen=True)
class ObservationGroup:
    key: str
    valuesets: tuple[str, ...]
    window_days: int | None  # None: all history


def check_id(patient_id: str) -> str:
    """Refuse anything that is not a FHIR id before it becomes part of a URL."""
    if (
        not isinstance(patient_id, str)
        or not _FHIR_ID.fullmatch(patient_id)
        or patient_id in (".", "..")  # would move the URL path: Patient/.. is the base
    ):
        raise InvalidPatientId("the patient id is not a valid FHIR id ([A-Za-z0-9-.]{1,64})")
    return patient_id


def escape_search_value(value: str) -> str:
    """FHIR search escaping for the characters that separate values (``\\ , | $``)."""
    for ch in ("\\", ",", "|", "$"):
        value = value.replace(ch, "\\" + ch)
    return value


def token_param(codes: Iterable[Code]) -> str:
    """``system|code,system|code`` in a stable order (the server ORs them)."""
    return ",".join(
        f"{escape_search_value(system)}|{escape_search_value(code)}"
        for system, code in sorted(set(codes))
    )


def _camel(name: str) -> str:
    parts = [p for p in re.split(r"[-_]+", name) if p]
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:]) if parts else name


def _top_level(protocol: Protocol) -> dict[str, str]:
    """Criterion code -> its top-level criterion code (members belong to their panel)."""
    parent = {c.code: c.code for c in protocol.criteria.values()}
    for c in protocol.criteria.values():
        for member in c.members:
            parent[member] = c.code
    return parent


def observation_groups(protocol: Protocol) -> list[ObservationGroup]:
    """Group the protocol's Observation value sets into searches (see module docstring)."""
    windows = protocol.observation_valuesets()
    top = _top_level(protocol)
    groups: dict[str, list[str]] = {}  # group id -> value sets, first-seen order
    names: dict[str, str] = {}  # group id -> key
    seen: set[str] = set()
    for c in protocol.criteria.values():
        for param, vs_id in c.params.items():
            if not param.endswith(_OBS_PARAM) or vs_id in seen:
                continue
            seen.add(vs_id)
            # a lab's evidence-only broader codes (context_...) are searched with the labs
            if param in (_OBS_PARAM, f"context_{_OBS_PARAM}") and c.rule.startswith(
                _LAB_RULE_PREFIX
            ):
                gid, name = "labs", "labs"
            else:
                gid = top[c.code]
                prefix = param.removesuffix(_OBS_PARAM).rstrip("_")
                name = _camel(prefix or vs_id)
            groups.setdefault(gid, []).append(vs_id)
            names.setdefault(gid, name)

    result: list[ObservationGroup] = []
    used: set[str] = set(_FIXED_KEYS) - {"labs"}
    for gid, vs_ids in groups.items():
        key = names[gid]
        if key in used:
            key = f"{key}{gid}"  # a clash between derived names: disambiguate, still stable
        used.add(key)
        spans = [windows[v] for v in vs_ids]
        known = [w for w in spans if w is not None]
        window = max(known) if len(known) == len(spans) else None  # None: one has no window
        result.append(ObservationGroup(key, tuple(vs_ids), window))
    return result


def _undated_results(relevance: Relevance, patient: str, as_of: date | None) -> Query | None:
    """One search for the protocol's results that carry no effective time at all.

    A ``date=ge…`` search never returns a result without ``effective[x]`` (one dated only by
    ``issued``, or not at all), yet such a result may be the newest: bundle mode keeps it and
    it blocks older ones, so pull mode must see it too (issue 19: every path reads the same
    data). Without date filters (``as_of=None``, the prefetch) the group searches find it.
    """
    protocol = relevance.protocol
    windowed = [g for g in observation_groups(protocol) if g.window_days is not None]
    if as_of is None or not windowed:
        return None
    codes: set[Code] = set()
    feeds: set[str] = set()
    for group in windowed:
        feeds |= set(group.valuesets)
        for vs_id in group.valuesets:
            codes |= protocol.valueset(vs_id).codes
    if relevance.site is not None:
        codes |= relevance.site.local_codes(codes)
    obs = KINDS["Observation"]
    search = ((str(obs.patient_param), patient), (str(obs.code_param), token_param(codes)))
    params = (*search, ("date:missing", "true"))
    # A server without ``:missing`` on dates (HAPI unless it indexes missing fields): every
    # result of these codes, whatever its date (a superset; copies found twice are one).
    fallback = (*search, ("_sort", "-date"))
    return Query("undated", "Observation", params, frozenset(feeds), fallback=fallback)


def plan_for(relevance: Relevance, patient: str, as_of: date | None) -> list[Query]:
    """The searches of ``relevance`` (service.relevance) for one (checked) patient id."""
    protocol, site = relevance.protocol, relevance.site
    queries = [Query("patient", "Patient", (("_id", patient),), frozenset({"Patient"}), True)]
    obs = KINDS["Observation"]
    for group in observation_groups(protocol):
        codes: set[Code] = set()
        for vs_id in group.valuesets:
            codes |= protocol.valueset(vs_id).codes
        if site is not None:  # the site's local codes for them
            codes |= site.local_codes(codes)
        params: list[tuple[str, str]] = [
            (str(obs.patient_param), patient),
            (str(obs.code_param), token_param(codes)),
        ]
        if as_of is not None and group.window_days is not None:
            since = as_of - timedelta(days=group.window_days + 1)
            params.append(("date", f"ge{since.isoformat()}"))
        params.append(("_sort", "-date"))
        queries.append(Query(group.key, "Observation", tuple(params), frozenset(group.valuesets)))
    undated = _undated_results(relevance, patient, as_of)
    if undated is not None:
        queries.append(undated)
    if relevance.every_observation:
        # Local codes only a terminology server can translate cannot be searched by code:
        # one unfiltered search (a superset is safe) feeds every Observation criterion.
        feeds = frozenset(protocol.observation_valuesets())
        every = (("patient", patient), ("_sort", "-date"))
        queries.append(Query("siteCodes", "Observation", every, feeds))
    for rtype in relevance.types:
        kind = KINDS[rtype]
        if rtype == "Observation" or kind.search_key is None or kind.patient_param is None:
            continue
        whole: tuple[tuple[str, str], ...] = ((kind.patient_param, patient),)
        if rtype == "QuestionnaireResponse":  # only the protocol's own attestation form
            whole += (("questionnaire", protocol.questionnaire_url),)
        if kind.include is not None:  # a medicationReference's Medication, in the same search
            whole += (("_include", kind.include),)
        queries.append(Query(kind.search_key, rtype, whole, frozenset({rtype})))
    if relevance.report_codes:  # a result may take its method from these reports
        reports = (
            (str(KINDS["DiagnosticReport"].patient_param), patient),
            ("code", token_param(relevance.report_codes)),
        )
        feeds = frozenset({"DiagnosticReport"})
        queries.append(Query("reports", "DiagnosticReport", reports, feeds, optional=True))
    return queries


def plan_queries(
    protocol: Protocol,
    patient_id: str,
    as_of: date | None,
    relevance: Relevance | None = None,
) -> list[Query]:
    """Every query for one patient; ``as_of=None`` drops the date filters (prefetch use).
    ``relevance``: the evaluation's selection (default: the protocol's, with the site
    terminology configured now)."""
    chosen = relevance if relevance is not None else current_relevance(protocol)
    return plan_for(chosen, check_id(patient_id), as_of)


def encode_query(params: Iterable[tuple[str, str]]) -> str:
    """A query string that stays readable: ``|``, ``,`` and ``:``/``/`` are left as they are."""
    return "&".join(f"{quote(k, safe='_:-')}={quote(v, safe='|,:/-._~')}" for k, v in params)


def prefetch_templates(protocol: Protocol) -> dict[str, str]:
    """CDS Hooks prefetch templates, one per query key, with ``{{context.patientId}}``."""
    return templates_for(current_relevance(protocol))


def templates_for(relevance: Relevance) -> dict[str, str]:
    """The prefetch templates of ``relevance``'s searches."""
    templates: dict[str, str] = {}
    marker = "PATIENTIDMARKER"
    for q in plan_for(relevance, marker, None):
        if q.read:
            templates[q.key] = f"{q.resource_type}/{PATIENT_TOKEN}"
        else:
            query = encode_query(q.params).replace(marker, PATIENT_TOKEN)
            templates[q.key] = f"{q.resource_type}?{query}"
    return templates
