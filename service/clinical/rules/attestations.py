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
from datetime import date
from typing import Any

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
from service.clinical.rules.params import AttestationParams, ConsentParams, SurvivalParams
from service.clinical.timing import (
    Placement,
    When,
    certainly_before,
    clinical_start,
    clinical_time,
    not_followed,
    place,
    placement_why,
    time_of,
)
from service.protocol import CriterionDef
from service.record import Resource, codings
from service.references import referenced_type

# -- the shared attestation lookup ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Problem:
    """Why a response's answer is unusable: for the reason, and for the warning."""

    reason: str
    warning: str


_NOT_BOOLEAN = _Problem("has no usable yes/no answer", "is not a single yes/no (boolean) answer")
_DUPLICATE = _Problem(
    "answers it more than once, with different answers",
    "is given more than once in the response, with different answers",
)


@dataclass(frozen=True, slots=True)
class _Answer:
    """One response's answer to the item we look for."""

    answer: bool | None  # None: not a usable yes/no answer
    when: When  # QuestionnaireResponse.authored, as an interval
    response: Resource
    problem: _Problem | None = None  # why ``answer`` is None


@dataclass(slots=True)
class AttestationLookup:
    """The investigator's answer to one item as of the evaluation date, or why there is none."""

    item: str
    answer: bool | None = None
    day: str | None = None  # the deciding response's authored date, as recorded
    author: str | None = None
    responses: list[Resource] = field(default_factory=list)  # the responses the text cites
    missing: str = ""  # plain words, set when ``answer`` is None
    when: When | None = None  # the deciding response's time
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


@dataclass(slots=True)
class _Candidates:
    """Responses in the window that answer the item, sorted by whether they may count."""

    usable: list[_Answer] = field(default_factory=list)
    not_investigator: list[_Answer] = field(default_factory=list)  # ignored: wrong author
    older: list[When] = field(default_factory=list)  # authored before the window


def lookup_attestation(ctx: Context, item: str) -> AttestationLookup:
    """The newest usable answer to ``item`` in the protocol's Questionnaire.

    Only responses with an allowed status, authored within the attestation window and not
    after the evaluation date, by an investigator (an allowed author type), count. The newest
    response that *contains* the item decides, so a newer response that skips the item does
    not erase an older answer; a newer non-yes/no answer is not skipped over (an older answer
    may no longer hold), nor is a newer different answer by someone else.
    """
    lookup = AttestationLookup(item)
    found = _Candidates()
    for qr in ctx.record.questionnaire_responses:
        _consider(ctx, qr, lookup, found)
    if not found.usable:
        lookup.missing = _none_found(ctx, item, found)
        return lookup
    _choose(ctx, lookup, found.usable)
    _check_newer_others(ctx, lookup, found.not_investigator)
    return lookup


def _consider(ctx: Context, qr: Resource, lookup: AttestationLookup, found: _Candidates) -> None:
    """Sort one response into ``found``, with a warning when it is unusable for a reason."""
    general = ctx.protocol.general
    window = int(general["attestation_window_days"])
    ref = ctx.record.ref(qr).reference
    if not _is_protocol_questionnaire(qr.get("questionnaire"), ctx, ref, lookup.issues):
        return
    groups = _answers_to(qr, lookup.item)
    if not groups:
        return  # the item is absent or unanswered: this response says nothing about it
    authored = clinical_time(qr)
    placed = place(authored, ctx.as_of, window)
    if placed is Placement.AFTER:
        return  # written after the evaluation date
    status = qr.get("status")
    if status not in set(general["attestation_statuses"]):
        if placed is not Placement.BEFORE:
            message = f"QuestionnaireResponse status {status!r} ignored"
            lookup.issues.append(Issue(Severity.WARNING, "business-rule", message, ref))
        return
    if placed is Placement.BEFORE:
        found.older.append(authored)
        return
    value, problem = _read_answer(groups)
    if placed is Placement.PARTLY:
        # It may be the newest answer, so it takes part, but it cannot decide.
        why = placement_why(authored, ctx.as_of, window)
        if authored.unknown:
            message = "QuestionnaireResponse has no readable authored date; it cannot decide"
            lookup.issues.append(Issue(Severity.WARNING, "incomplete", message, ref))
        value, problem = None, _Problem(f"cannot decide: {why}", why)
    answer = _Answer(value, authored, qr, problem)
    if not _by_investigator(qr, ctx):
        message = f"QuestionnaireResponse {_author_text(qr)}, not {_types(ctx)}; not used"
        lookup.issues.append(Issue(Severity.WARNING, "business-rule", message, ref))
        found.not_investigator.append(answer)
        return
    if problem is not None:
        message = f"answer to item {lookup.item} {problem.warning}; not used"
        lookup.issues.append(Issue(Severity.WARNING, "value", message, ref))
    found.usable.append(answer)


def _read_answer(groups: list[list[Any]]) -> tuple[bool | None, _Problem | None]:
    """(value, problem): one yes/no across every copy of the item, or why there is none."""
    values = [_boolean(answers) for answers in groups]
    if None in values:
        return None, _NOT_BOOLEAN
    if len(set(values)) > 1:
        return None, _DUPLICATE
    return values[0], None


def _none_found(ctx: Context, item: str, found: _Candidates) -> str:
    """Why no answer counts, naming responses ignored for their author."""
    window = int(ctx.protocol.general["attestation_window_days"])
    if found.older:
        latest = max(found.older, key=lambda w: w.latest or date.min)
        text = f"the latest attestation of {item}, {latest.text}, is older than {window} days"
    else:
        text = f"no investigator attestation of {item} found"
    if found.not_investigator:
        names = ", ".join(
            f"{ctx.record.ref(a.response).reference} ({_author_text(a.response)})"
            for a in found.not_investigator
        )
        text += f"; ignored, not authored by {_types(ctx)}: {names}"
    return text


def _check_newer_others(ctx: Context, lookup: AttestationLookup, others: list[_Answer]) -> None:
    """A newer (or same-day) different answer by someone else leaves the item open."""
    chosen = lookup.when
    if lookup.answer is None or chosen is None:
        return
    newer = [
        a
        for a in others
        if not certainly_before(a.when, chosen, by_instant=False) and a.answer is not lookup.answer
    ]
    if not newer:
        return
    names = ", ".join(
        f"{ctx.record.ref(a.response).reference} ({_author_text(a.response)}, {a.when.text})"
        for a in newer
    )
    lookup.missing = (
        f"{lookup.describe()}, but a response not authored by {_types(ctx)} answers it "
        f"differently on the same day or later: {names}"
    )
    lookup.answer = None


def _choose(ctx: Context, lookup: AttestationLookup, usable: list[_Answer]) -> None:
    """Take the newest answer; answers that cannot be ordered before it (the same day, a
    partial date that overlaps it) must agree, and each must be able to decide."""
    top = not_followed(usable, lambda a: a.when)
    newest_day = " and ".join(sorted({a.when.text for a in top}))
    lookup.responses = [a.response for a in top]
    values = {a.answer for a in top}
    named = _inexact(ctx, top)
    if None in values:
        problem = next(a.problem or _NOT_BOOLEAN for a in top if a.answer is None)
        lookup.missing = (
            f"the latest attestation of {lookup.item} ({newest_day}) {problem.reason}{named}"
        )
    elif len(values) > 1:
        lookup.missing = (
            f"attestations of {lookup.item} on {newest_day} disagree and cannot be ordered{named}"
        )
    else:
        chosen = top[0]
        lookup.answer = chosen.answer
        lookup.day = chosen.when.text
        lookup.when = chosen.when
        lookup.author = _author(chosen.response)


def _inexact(ctx: Context, top: list[_Answer]) -> str:
    """' (QuestionnaireResponse/b dated 2026-11 may be the newer)' for responses of the group
    not dated to one day; '' when all are (their reasons read as before)."""
    named = [
        f"{ctx.record.ref(a.response).reference} dated {a.when.text}"
        for a in top
        if not a.when.exact
    ]
    if not named or len(top) < 2:
        return ""
    return f" ({', '.join(named)} may be the newer: its date is not one day)"


def _types(ctx: Context) -> str:
    """'a Practitioner or PractitionerRole', from the protocol."""
    return "a " + " or ".join(ctx.protocol.general["attestation_author_types"])


def _by_investigator(qr: Resource, ctx: Context) -> bool:
    return _author_type(qr, ctx) in set(ctx.protocol.general["attestation_author_types"])


def _author_type(qr: Resource, ctx: Context) -> str | None:
    """The author's resource type: of the resource the reference resolves to in the data
    (a Bundle's urn:uuid fullUrl, a contained '#id', ``Practitioner?identifier=...``), else
    what the reference text names ('Practitioner/1', an absolute URL), else Reference.type
    for an unresolved 'urn:' reference. None when unknown or when that and Reference.type
    disagree."""
    author = qr.get("author")
    if not isinstance(author, dict) or not isinstance(author.get("reference"), str):
        return None
    reference = author["reference"]
    declared = author.get("type") if isinstance(author.get("type"), str) else None
    target = ctx.record.resolve(author, qr)
    if target is not None:
        found = target.get("resourceType")
    elif reference.startswith("urn:"):
        found = declared
    else:
        found = referenced_type(reference)
    if not isinstance(found, str) or (declared is not None and declared != found):
        return None
    return found


def _author_text(qr: Resource) -> str:
    """'authored by Patient/p1', or 'with no author reference'."""
    author = qr.get("author")
    reference = author.get("reference") if isinstance(author, dict) else None
    return f"authored by {reference}" if isinstance(reference, str) else "with no author reference"


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


def _answers_to(qr: Resource, link_id: str) -> list[list[Any]]:
    """The answers of every item with ``link_id``: an item may (wrongly) appear twice."""
    found: list[list[Any]] = []
    for item in _items(qr.get("item")):
        answers = item.get("answer")
        if item.get("linkId") == link_id and isinstance(answers, list) and answers:
            found.append(answers)
    return found


def _boolean(answers: list[Any]) -> bool | None:
    """answer[0].valueBoolean; None when it is not boolean or a further answer contradicts it."""
    values = [a.get("valueBoolean") if isinstance(a, dict) else None for a in answers]
    first = values[0]
    if not isinstance(first, bool) or any(v != first for v in values[1:]):
        return None
    return first


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


@rule("attestation", reads=("QuestionnaireResponse",), params=AttestationParams)
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
        when = clinical_start(proc)  # listed by when it began; it never decides
        if when.earliest is not None and when.earliest > ctx.as_of:
            continue
        name = _display(proc.get("code"), codes[0])
        day = "date not recorded" if when.unknown else when.text
        text = f"{ctx.record.ref(proc).reference} {name} ({proc.get('status')}, {day})"
        found.append((when.earliest, proc, text))
    found.sort(key=lambda f: f[0] or date.min, reverse=True)
    return [(proc, text) for _, proc, text in found]


def _display(concept: Any, code: tuple[str, str]) -> str:
    for coding in concept.get("coding") or ():
        if not isinstance(coding, dict) or not coding.get("display"):
            continue
        if (coding.get("system") or "", str(coding.get("code"))) == code:
            return f"{coding['display']} ({code[1]})"
    return code[1]


@rule("survival", reads=("QuestionnaireResponse",), params=SurvivalParams)
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
        died = time_of(raw)
        if died.earliest is None or died.latest is None:
            return undetermined(
                criterion.code,
                "a date of death is recorded but cannot be read",
                [pref],
                [DataRequirement("Patient", None, "a readable Patient.deceasedDateTime")],
            )
        shown = died.text
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


@rule("consent", reads=("Consent", "QuestionnaireResponse"), params=ConsentParams)
def consent(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """An active research Consent covering the evaluation date; a refusal; else the investigator.

    A Consent signed after the evaluation date is not part of this evaluation; one that may
    have been signed after it (a partial date) leaves the criterion open. Draft or proposed
    consent is not consent yet and inactive consent no longer counts; both are named in the
    reason. A Consent that denies anywhere in its provisions is read as a refusal, and a
    covering consent counts only when every refusal is dated strictly before it.
    """
    found = _sort_consents(criterion, ctx)
    result = _consent_decision(criterion, ctx, found)
    result.issues[:0] = found.issues
    return result


Dated = tuple[When, Resource]  # a Consent and its signing date (``unknown`` if unreadable)


@dataclass(slots=True)
class _Consents:
    """This patient's research Consents for the evaluation date, by what they say."""

    covering: list[Dated] = field(default_factory=list)
    refused: list[Dated] = field(default_factory=list)
    unsure: list[tuple[str, Resource]] = field(default_factory=list)  # may postdate asOf
    notes: list[str] = field(default_factory=list)
    noted: list[Resource] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    def note(self, text: str, consent: Resource) -> None:
        self.notes.append(text)
        self.noted.append(consent)


def _sort_consents(criterion: CriterionDef, ctx: Context) -> _Consents:
    scope = ctx.protocol.valueset(criterion.params["consent_scope_valueset"])
    found = _Consents()
    for c in ctx.record.consents:
        if not scope.matches(codings(c.get("scope"))):
            continue
        if _study_of(c, ctx) is False:
            found.note(f"{ctx.record.ref(c).reference} is consent to another study", c)
            continue
        signed = clinical_time(c)
        if signed.earliest is not None and signed.earliest > ctx.as_of:
            continue
        _sort_consent(c, signed, ctx, found)
    return found


def _provision(consent: Resource) -> dict[str, Any]:
    """The Consent's provision; {} when it is missing or not an object (read as absent)."""
    found = consent.get("provision")
    return found if isinstance(found, dict) else {}


def _sort_consent(c: Resource, signed: When, ctx: Context, found: _Consents) -> None:
    ref = ctx.record.ref(c).reference
    status = c.get("status")
    provision = _provision(c)
    if status == "rejected" or (status == "active" and _denies(provision)):
        found.refused.append((signed, c))
    elif status == "active" and signed.latest is not None and signed.latest > ctx.as_of:
        shown = signed.text
        found.unsure.append((f"{ref} was signed {shown}, possibly after {ctx.as_of}", c))
    elif status == "active":
        gap, certain = _period_gap(provision.get("period"), ctx.as_of)
        if gap is None:
            found.covering.append((signed, c))
        elif certain:
            found.note(f"{ref} is active but {gap}", c)
        else:
            found.unsure.append((f"{ref} is active but {gap}", c))
    elif status in ("draft", "proposed"):
        found.note(f"{ref} is {status}: not consent yet", c)
    elif status == "inactive":
        found.note(f"{ref} is inactive and does not count", c)
    elif status != "entered-in-error":
        message = f"Consent status {status!r} ignored"
        found.issues.append(Issue(Severity.WARNING, "business-rule", message, ref))


def _denies(provision: Any) -> bool:
    """A deny anywhere in the provision tree. A nested deny (e.g. for research purposes under
    a general permit) is read, conservatively, as a refusal of research consent."""
    if not isinstance(provision, dict):
        return False
    if provision.get("type") == "deny":
        return True
    nested = provision.get("provision")
    return isinstance(nested, list) and any(_denies(n) for n in nested)


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
            value = ext.get("valueReference")
            study = ctx.record.resolve(value, consent)
            if isinstance(study, dict) and study.get("resourceType") == "ResearchStudy":
                # The study is in the data (e.g. a Bundle's urn:uuid): its own url/identifiers.
                named.extend(_study_names(study))
            reference = value.get("reference") if isinstance(value, dict) else None
            if isinstance(reference, str):
                named.append(reference)
    if not named:
        return None
    return any(n in ours or n.endswith(f"/ResearchStudy/{ctx.protocol.id}") for n in named)


def _study_names(study: Resource) -> list[str]:
    """How a ResearchStudy resource names itself: its url (with version), identifier values."""
    names: list[str] = []
    url, version = study.get("url"), study.get("version")
    if isinstance(url, str):
        names.append(f"{url}|{version}" if isinstance(version, str) else url)
    idents = study.get("identifier")
    for ident in idents if isinstance(idents, list) else ():
        value = ident.get("value") if isinstance(ident, dict) else None
        if isinstance(value, str):
            names.append(value)
    return names


def _consent_decision(criterion: CriterionDef, ctx: Context, found: _Consents) -> CriterionResult:
    ref = ctx.record.ref
    if found.covering:
        return _covering(criterion, ctx, found)
    refusals = _refusals_text(ctx, found.refused)
    if found.unsure:
        also = f"; refused: {refusals}" if found.refused else ""
        return undetermined(
            criterion.code,
            f"{'; '.join(t for t, _ in found.unsure)}: {_full_date_needed(found)}{also}",
            [ref(c) for _, c in found.unsure] + [ref(r) for _, r in found.refused],
            [_consent_requirement(criterion, ctx)],
        )
    if found.refused:
        extra = f" ({'; '.join(found.notes)})" if found.notes else ""
        return not_met(
            criterion.code,
            f"research consent refused: {refusals}; no active research consent{extra}",
            [ref(r) for _, r in found.refused] + [ref(r) for r in found.noted],
        )
    prefix = "no active research consent"
    prefix += f" ({'; '.join(found.notes)}); " if found.notes else "; "
    lookup = lookup_attestation(ctx, criterion.params["attestation_item"])
    return decide_by_attestation(
        criterion,
        ctx,
        lookup,
        prefix=prefix,
        evidence=[ref(r) for r in found.noted],
        needs=[_consent_requirement(criterion, ctx)],
    )


def _covering(criterion: CriterionDef, ctx: Context, found: _Consents) -> CriterionResult:
    """The newest covering consent counts only if every refusal is dated strictly before it."""
    ref = ctx.record.ref
    day, chosen = max(found.covering, key=lambda pair: pair[0].earliest or date.min)
    signed = "signing date not recorded" if day.unknown else f"signed {day.text}"
    reason = f"active research consent {ref(chosen).reference} ({signed}) covers {ctx.as_of}"
    unordered = [(d, r, why) for d, r in found.refused if (why := _not_before(d, day)) is not None]
    if unordered:
        listed = "; ".join(
            f"{ref(r).reference}{'' if d.unknown else f' ({d.text})'} {why}"
            for d, r, why in unordered
        )
        return undetermined(
            criterion.code,
            f"{reason}, but a refusal is not dated before it: {listed}",
            [ref(chosen)] + [ref(r) for _, r, _ in unordered],
            [_consent_requirement(criterion, ctx)],
        )
    if _study_of(chosen, ctx) is None:
        reason += " (the Consent does not name the study: check it is this trial's)"
    return met(criterion.code, reason, [ref(chosen)])


def _not_before(refusal: When, consent: When) -> str | None:
    """None when the refusal is dated strictly before the consent (by day: the order within
    a day is not trusted for a refusal); else why it may not be."""
    if consent.unknown:
        return "cannot be ordered against the undated consent"
    if refusal.unknown:
        return "is undated"
    if certainly_before(refusal, consent, by_instant=False):
        return None
    if certainly_before(consent, refusal, by_instant=False):
        return "is later"
    if refusal.exact and consent.exact:
        return "is on the same day"
    return "may be on the same day or later"


def _refusals_text(ctx: Context, refused: list[Dated]) -> str:
    """'Consent/a (2026-11-10), Consent/b (a nested provision denies)'."""
    items = []
    for day, r in refused:
        details = [] if day.unknown else [day.text]
        provision = _provision(r)
        if r.get("status") == "active" and provision.get("type") != "deny":
            details.append("a nested provision denies")
        shown = f" ({'; '.join(details)})" if details else ""
        items.append(f"{ctx.record.ref(r).reference}{shown}")
    return ", ".join(items)


def _period_gap(period: Any, as_of: date) -> tuple[str | None, bool]:
    """(why not, certain): (None, True) when Consent.provision.period (if any) covers
    ``as_of`` wholly; a period that may or may not cover it (a partial start or end around
    ``as_of``) is not certain, and leaves the criterion open rather than decide."""
    if not isinstance(period, dict) or not (period.get("start") or period.get("end")):
        return None, True
    start, end = period.get("start"), period.get("end")
    begun, ended = time_of(start), time_of(end)
    if (start is not None and begun.unknown) or (end is not None and ended.unknown):
        return "its consent period cannot be read", True
    shown = f"{str(start)[:10] if start else '…'} to {str(end)[:10] if end else '…'}"
    if begun.earliest is not None and begun.earliest > as_of:
        return f"its consent period ({shown}) has not begun on {as_of}", True
    if ended.latest is not None and ended.latest < as_of:
        return f"its consent period ({shown}) does not cover {as_of}", True
    if begun.latest is not None and begun.latest > as_of:
        return f"its consent period ({shown}) may not have begun on {as_of}", False
    if ended.earliest is not None and ended.earliest < as_of:
        return f"its consent period ({shown}) may have ended before {as_of}", False
    return None, True


def _full_date_needed(found: _Consents) -> str:
    """What would settle an unsure consent: a full signing date, and/or a full period."""
    periods = any("consent period" in text for text, _ in found.unsure)
    signing = any("consent period" not in text for text, _ in found.unsure)
    needed = [w for w, on in (("signing date", signing), ("consent period", periods)) if on]
    return f"a full {' and '.join(needed)} is needed"


def _consent_requirement(criterion: CriterionDef, ctx: Context) -> DataRequirement:
    vs = ctx.protocol.valueset(criterion.params["consent_scope_valueset"])
    return DataRequirement(
        "Consent",
        vs.url,
        "an active research Consent for this study covering the evaluation date",
        path="scope",
    )
