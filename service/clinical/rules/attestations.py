"""Investigator attestations, survival and informed consent.

Some criteria are judgements no clinical code captures (prior therapy adequate, survival
> 3 months, contraception agreed). The investigator answers them as yes/no items of the
protocol's Questionnaire; this module finds the answer that applies on the evaluation date
and builds the rules that rest on it. Recorded facts that contradict a judgement (a death, a
refused consent) decide before the attestation is consulted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from service.clinical.dates import DateRange, in_window, parse_date
from service.clinical.model import (
    CriterionResult,
    DataRequirement,
    Issue,
    Severity,
    SourceRef,
    met,
    not_met,
    undetermined,
)
from service.clinical.rules import Context, rule
from service.protocol import CriterionDef
from service.record import Resource, codings

# -- the shared attestation lookup ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """One response's answer to the item we look for."""

    answer: bool | None  # None: not a usable yes/no answer
    day: date
    moment: datetime | None  # full timestamp with zone, to order same-day responses
    response: Resource


@dataclass(slots=True)
class AttestationLookup:
    """The investigator's answer to one item as of the evaluation date, or why there is none."""

    item: str
    answer: bool | None = None
    day: date | None = None
    author: str | None = None
    responses: list[Resource] = field(default_factory=list)  # the responses the text cites
    missing: str = ""  # plain words, set when ``answer`` is None
    issues: list[Issue] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.answer is not None

    def describe(self) -> str:
        """'I5 attested true by Practitioner/dr-x on 2026-11-15', or why there is no answer."""
        if self.answer is None:
            return self.missing
        by = f"by {self.author}" if self.author else "(author not recorded)"
        return f"{self.item} attested {str(self.answer).lower()} {by} on {self.day}"


def lookup_attestation(ctx: Context, item: str) -> AttestationLookup:
    """The newest usable answer to ``item`` in the protocol's Questionnaire.

    Only responses with an allowed status, authored within the attestation window and not
    after the evaluation date count. The newest response that *contains* the item decides,
    so a newer response that skips the item does not erase an older answer; a newer
    non-yes/no answer is not skipped over (an older answer may no longer hold).
    """
    general = ctx.protocol.general
    statuses = set(general["attestation_statuses"])
    window = int(general["attestation_window_days"])
    lookup = AttestationLookup(item)
    usable: list[_Answer] = []
    older: list[date] = []
    for qr in ctx.record.questionnaire_responses:
        ref = ctx.record.ref(qr).reference
        if not _is_protocol_questionnaire(qr.get("questionnaire"), ctx, ref, lookup.issues):
            continue
        answers = _answers_to(qr, item)
        if not answers:
            continue  # the item is absent or unanswered: this response says nothing about it
        authored = parse_date(qr.get("authored"))
        if authored is not None and authored.earliest > ctx.as_of:
            continue  # written after the evaluation date
        day = authored.latest if authored is not None and authored.exact else None
        status = qr.get("status")
        if status not in statuses:
            if day is None or in_window(day, ctx.as_of, window):
                lookup.issues.append(
                    Issue(
                        Severity.WARNING,
                        "business-rule",
                        f"QuestionnaireResponse status {status!r} ignored",
                        ref,
                    )
                )
            continue
        if day is None:
            lookup.issues.append(
                Issue(
                    Severity.WARNING,
                    "incomplete",
                    "QuestionnaireResponse has no full authored date; not used",
                    ref,
                )
            )
            continue
        if not in_window(day, ctx.as_of, window):
            older.append(day)
            continue
        value = _boolean(answers)
        if value is None:
            lookup.issues.append(
                Issue(
                    Severity.WARNING,
                    "value",
                    f"answer to item {item} is not a single yes/no (boolean) answer; not used",
                    ref,
                )
            )
        usable.append(_Answer(value, day, _moment(qr.get("authored")), qr))

    if not usable:
        if older:
            lookup.missing = (
                f"the latest attestation of {item}, {max(older)}, is older than {window} days"
            )
        else:
            lookup.missing = f"no investigator attestation of {item} found"
        return lookup
    _choose(lookup, usable)
    return lookup


def _choose(lookup: AttestationLookup, usable: list[_Answer]) -> None:
    """Take the newest answer; same-day answers that cannot be ordered must agree."""
    newest_day = max(a.day for a in usable)
    top = [a for a in usable if a.day == newest_day]
    if len(top) > 1 and all(a.moment is not None for a in top):
        latest = max(a.moment for a in top if a.moment is not None)
        top = [a for a in top if a.moment == latest]
    lookup.responses = [a.response for a in top]
    values = {a.answer for a in top}
    if None in values:
        lookup.missing = (
            f"the latest attestation of {lookup.item} ({newest_day}) has no usable yes/no answer"
        )
    elif len(values) > 1:
        lookup.missing = (
            f"attestations of {lookup.item} on {newest_day} disagree and cannot be ordered"
        )
    else:
        chosen = top[0]
        lookup.answer = chosen.answer
        lookup.day = chosen.day
        lookup.author = _author(chosen.response)


def _is_protocol_questionnaire(value: Any, ctx: Context, ref: str, issues: list[Issue]) -> bool:
    """The response answers our Questionnaire: its url, or url|version of the same version."""
    if not isinstance(value, str):
        return False
    url, sep, version = value.partition("|")
    if url != ctx.protocol.questionnaire_url:
        return False
    ours = ctx.protocol.questionnaire.get("version")
    if sep and ours and version != ours:
        # Items of another version may ask something else; do not guess.
        issues.append(
            Issue(
                Severity.WARNING,
                "not-supported",
                f"QuestionnaireResponse answers questionnaire version {version!r}, "
                f"not {ours!r}; ignored",
                ref,
            )
        )
        return False
    return True


def _items(items: Any) -> Iterator[dict[str, Any]]:
    """Every item at any depth: nested under items and under answers."""
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, dict):
            continue
        yield item
        yield from _items(item.get("item"))
        for answer in item.get("answer") or ():
            if isinstance(answer, dict):
                yield from _items(answer.get("item"))


def _answers_to(qr: Resource, link_id: str) -> list[Any]:
    for item in _items(qr.get("item")):
        if item.get("linkId") == link_id:
            answers = item.get("answer")
            return answers if isinstance(answers, list) else []
    return []


def _boolean(answers: list[Any]) -> bool | None:
    """answer[0].valueBoolean; None when it is not boolean or a further answer contradicts it."""
    values = [a.get("valueBoolean") if isinstance(a, dict) else None for a in answers]
    first = values[0]
    if not isinstance(first, bool) or any(v != first for v in values[1:]):
        return None
    return first


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _author(qr: Resource) -> str | None:
    author = qr.get("author")
    if not isinstance(author, dict):
        return None
    for key in ("display", "reference"):
        if isinstance(author.get(key), str) and author[key]:
            return author[key]
    return None


def attestation_requirement(ctx: Context, item: str) -> DataRequirement:
    return DataRequirement(
        "QuestionnaireResponse",
        None,
        f"investigator attestation item {item} in {ctx.protocol.questionnaire_url}",
    )


def decide_by_attestation(
    criterion: CriterionDef,
    ctx: Context,
    lookup: AttestationLookup,
    *,
    prefix: str = "",
    evidence: list[SourceRef] | None = None,
    needs: list[DataRequirement] | None = None,
) -> CriterionResult:
    """Met / not met from the answer; undetermined (asking for the attestation) without one."""
    refs = list(evidence or []) + [ctx.record.ref(r) for r in lookup.responses]
    reason = f"{prefix}{lookup.describe()}"
    if lookup.answer is True:
        result = met(criterion.code, reason, refs)
    elif lookup.answer is False:
        result = not_met(criterion.code, reason, refs)
    else:
        wanted = list(needs or []) + [attestation_requirement(ctx, lookup.item)]
        result = undetermined(criterion.code, reason, refs, wanted)
    result.issues.extend(lookup.issues)
    return result


# -- rules ------------------------------------------------------------------------------------


@rule("attestation", reads=("QuestionnaireResponse",))
def attestation(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """The investigator's answer decides; supporting records are listed but never decide."""
    lookup = lookup_attestation(ctx, criterion.params["attestation_item"])
    if lookup.found or "supporting_procedure_valueset" not in criterion.params:
        return decide_by_attestation(criterion, ctx, lookup)
    supporting = _supporting_procedures(criterion, ctx)
    if not supporting:
        return decide_by_attestation(criterion, ctx, lookup)
    listed = "; ".join(text for _, text in supporting)
    result = decide_by_attestation(
        criterion, ctx, lookup, evidence=[ctx.record.ref(p) for p, _ in supporting]
    )
    result.reason = (
        f"{result.reason}; supporting records found (they need the investigator's "
        f"judgement and do not decide on their own): {listed}"
    )
    return result


def _supporting_procedures(criterion: CriterionDef, ctx: Context) -> list[tuple[Resource, str]]:
    """Procedures of the supporting ValueSet done on or before the evaluation date."""
    vs = ctx.protocol.valueset(criterion.params["supporting_procedure_valueset"])
    statuses = set(ctx.protocol.general["procedure_statuses"])
    found: list[tuple[date | None, Resource, str]] = []
    for proc in ctx.record.procedures:
        codes = [c for c in codings(proc.get("code")) if c in vs.codes]
        if not codes or proc.get("status") not in statuses:
            continue
        when = _performed(proc)
        if when is not None and when.earliest > ctx.as_of:
            continue
        name = _display(proc.get("code"), codes[0])
        day = _day_text(when) if when is not None else "date not recorded"
        text = f"{ctx.record.ref(proc).reference} {name} ({proc.get('status')}, {day})"
        found.append((when.earliest if when else None, proc, text))
    found.sort(key=lambda f: f[0] or date.min, reverse=True)
    return [(proc, text) for _, proc, text in found]


def _performed(proc: Resource) -> DateRange | None:
    period = proc.get("performedPeriod") if isinstance(proc.get("performedPeriod"), dict) else {}
    for value in (proc.get("performedDateTime"), period.get("start"), period.get("end")):
        parsed = parse_date(value)
        if parsed is not None:
            return parsed
    return None


def _day_text(day: DateRange) -> str:
    """A (possibly partial) date as precisely as it was recorded."""
    if day.exact:
        return str(day.earliest)
    if (day.earliest.year, day.earliest.month) == (day.latest.year, day.latest.month):
        return f"{day.earliest:%Y-%m}"
    return str(day.earliest.year)


def _display(concept: Any, code: tuple[str, str]) -> str:
    for coding in concept.get("coding") or ():
        if not isinstance(coding, dict) or not coding.get("display"):
            continue
        if (coding.get("system") or "", str(coding.get("code"))) == code:
            return f"{coding['display']} ({code[1]})"
    return code[1]


@rule("survival", reads=("QuestionnaireResponse",))
def survival(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """A recorded death on or before the evaluation date decides; otherwise the investigator."""
    patient = ctx.record.patient
    pref = ctx.record.patient_ref
    item = criterion.params["attestation_item"]
    if patient.get("deceasedBoolean") is True:
        return not_met(criterion.code, "the patient is recorded as deceased", [pref])
    prefix = ""
    evidence: list[SourceRef] = []
    raw = patient.get("deceasedDateTime")
    if raw is not None:
        died = parse_date(raw)
        if died is None:
            return undetermined(
                criterion.code,
                "a date of death is recorded but cannot be read",
                [pref],
                [DataRequirement("Patient", None, "a readable Patient.deceasedDateTime")],
            )
        shown = _day_text(died)
        if died.latest <= ctx.as_of:
            return not_met(criterion.code, f"the patient died on {shown}", [pref])
        if died.earliest <= ctx.as_of:
            return undetermined(
                criterion.code,
                f"the recorded date of death ({shown}) may be on or before {ctx.as_of}",
                [pref],
                [DataRequirement("Patient", None, "a full Patient.deceasedDateTime")],
            )
        prefix = f"a death is recorded on {shown}, after the evaluation date {ctx.as_of}; "
        evidence = [pref]
    lookup = lookup_attestation(ctx, item)
    return decide_by_attestation(criterion, ctx, lookup, prefix=prefix, evidence=evidence)


@rule("consent", reads=("Consent", "QuestionnaireResponse"))
def consent(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """An active research Consent covering the evaluation date; a refusal; else the investigator.

    A Consent signed after the evaluation date is not part of this evaluation. Draft or
    proposed consent is not consent yet and inactive consent no longer counts; both are named
    in the reason. An active Consent whose top-level provision denies is read as a refusal.
    """
    scope = ctx.protocol.valueset(criterion.params["consent_scope_valueset"])
    covering: list[tuple[date | None, Resource]] = []
    refused: list[tuple[date | None, Resource]] = []
    notes: list[str] = []
    noted: list[Resource] = []
    issues: list[Issue] = []
    for c in ctx.record.consents:
        if not scope.matches(codings(c.get("scope"))):
            continue
        ref = ctx.record.ref(c).reference
        if _study_of(c, ctx) is False:
            notes.append(f"{ref} is consent to another study")
            noted.append(c)
            continue
        signed = parse_date(c.get("dateTime"))
        if signed is not None and signed.earliest > ctx.as_of:
            continue
        signed_day = signed.latest if signed is not None else None
        status = c.get("status")
        provision = c.get("provision") if isinstance(c.get("provision"), dict) else {}
        if status == "rejected" or (status == "active" and provision.get("type") == "deny"):
            refused.append((signed_day, c))
        elif status == "active":
            gap = _period_gap(provision.get("period"), ctx.as_of)
            if gap is None:
                covering.append((signed_day, c))
            else:
                notes.append(f"{ref} is active but {gap}")
                noted.append(c)
        elif status in ("draft", "proposed"):
            notes.append(f"{ref} is {status}: not consent yet")
            noted.append(c)
        elif status == "inactive":
            notes.append(f"{ref} is inactive and does not count")
            noted.append(c)
        elif status != "entered-in-error":
            issues.append(
                Issue(Severity.WARNING, "business-rule", f"Consent status {status!r} ignored", ref)
            )

    result = _consent_decision(criterion, ctx, covering, refused, notes, noted)
    result.issues[:0] = issues
    return result


# R4 core extension naming the ResearchStudy a Consent is for.
RESEARCH_STUDY_CONTEXT = "http://hl7.org/fhir/StructureDefinition/consent-ResearchStudyContext"


def _study_of(consent: Resource, ctx: Context) -> bool | None:
    """Whether a Consent is for this study: True, False (another study), None (names none)."""
    canonical = ctx.protocol.canonical
    ours = {canonical, f"{canonical}|{ctx.protocol.version}", f"ResearchStudy/{ctx.protocol.id}"}
    named: list[str] = []
    for policy in consent.get("policy") or ():
        uri = policy.get("uri") if isinstance(policy, dict) else None
        if isinstance(uri, str) and "ResearchStudy/" in uri:
            named.append(uri)
    for ext in consent.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == RESEARCH_STUDY_CONTEXT:
            reference = (ext.get("valueReference") or {}).get("reference")
            if isinstance(reference, str):
                named.append(reference)
    if not named:
        return None
    return any(n in ours or n.endswith(f"/ResearchStudy/{ctx.protocol.id}") for n in named)


def _consent_decision(
    criterion: CriterionDef,
    ctx: Context,
    covering: list[tuple[date | None, Resource]],
    refused: list[tuple[date | None, Resource]],
    notes: list[str],
    noted: list[Resource],
) -> CriterionResult:
    ref = ctx.record.ref
    if covering:
        day, chosen = max(covering, key=lambda pair: pair[0] or date.min)
        signed = f"signed {day}" if day else "signing date not recorded"
        reason = f"active research consent {ref(chosen).reference} ({signed}) covers {ctx.as_of}"
        later_refusal = [r for d, r in refused if d is not None and day is not None and d > day]
        if later_refusal:
            return undetermined(
                criterion.code,
                f"{reason}, but {', '.join(ref(r).reference for r in later_refusal)} "
                "records a later refusal",
                [ref(chosen)] + [ref(r) for r in later_refusal],
                [_consent_requirement(criterion, ctx)],
            )
        if _study_of(chosen, ctx) is None:
            reason += " (the Consent does not name the study: check it is this trial's)"
        return met(criterion.code, reason, [ref(chosen)])
    if refused:
        listed = ", ".join(
            f"{ref(r).reference} ({d})" if d else ref(r).reference for d, r in refused
        )
        extra = f" ({'; '.join(notes)})" if notes else ""
        return not_met(
            criterion.code,
            f"research consent refused: {listed}; no active research consent{extra}",
            [ref(r) for _, r in refused] + [ref(r) for r in noted],
        )
    prefix = "no active research consent"
    prefix += f" ({'; '.join(notes)}); " if notes else "; "
    lookup = lookup_attestation(ctx, criterion.params["attestation_item"])
    return decide_by_attestation(
        criterion,
        ctx,
        lookup,
        prefix=prefix,
        evidence=[ref(r) for r in noted],
        needs=[_consent_requirement(criterion, ctx)],
    )


def _period_gap(period: Any, as_of: date) -> str | None:
    """None when Consent.provision.period (if any) covers ``as_of``; else why not, in words."""
    if not isinstance(period, dict) or not (period.get("start") or period.get("end")):
        return None
    start, end = period.get("start"), period.get("end")
    start_day, end_day = parse_date(start), parse_date(end)
    if (start is not None and start_day is None) or (end is not None and end_day is None):
        return "its consent period cannot be read"
    shown = f"{str(start)[:10] if start else '…'} to {str(end)[:10] if end else '…'}"
    if start_day is not None and start_day.latest > as_of:
        return f"its consent period ({shown}) has not begun on {as_of}"
    if end_day is not None and end_day.earliest < as_of:
        return f"its consent period ({shown}) does not cover {as_of}"
    return None


def _consent_requirement(criterion: CriterionDef, ctx: Context) -> DataRequirement:
    vs = ctx.protocol.valueset(criterion.params["consent_scope_valueset"])
    return DataRequirement(
        "Consent",
        vs.url,
        "an active research Consent for this study covering the evaluation date",
        path="scope",
    )
