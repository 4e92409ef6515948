"""A diagnosis recorded as a Condition, coded in Condition.code or in the mCODE
histology-morphology-behavior extension (registries such as PanCareSurPass leave
Condition.code empty and put the ICD-O-3 morphology only there).

A diagnosis whose lineage is not stated (e.g. ICD-10-CM C91.0x: ALL, B or T) counts only when
another criterion (the CD19 immunophenotype) shows the lineage; a diagnosis of another lineage
(T-ALL) recorded as well makes the lineage conflicting. Only a confirmed diagnosis counts (an
absent verification status counts, with a caveat): a provisional or differential one is a
question, not a diagnosis. The helpers here are shared with the relapse rule, which reads the
same Conditions.

Reasons name the disease, the diagnosis sought, its lineage and the lineage marker with the
words of the criterion's parameters (``disease``, ``confirmed_disease``,
``confirmed_disease_long``, ``lineage``, ``lineage_marker``), never with words of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from service.clinical.model import (
    CriterionResult,
    DataRequirement,
    Outcome,
    SourceRef,
    met,
    not_met,
    undetermined,
)
from service.clinical.rules import Context, rule
from service.clinical.rules.params import DiagnosisParams
from service.clinical.timing import When, element_time
from service.protocol import Code, CriterionDef, ValueSet
from service.record import Resource, codings

_SNOMED = "http://snomed.info/sct"
_SEMANTIC_TAG = re.compile(r"\s*\([a-z /]+\)$")

# Presentation only: how a code system is named in a reason.
_SYSTEM_LABELS = {
    "http://loinc.org": "LOINC",
    "http://snomed.info/sct": "SNOMED CT",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10",
    "http://terminology.hl7.org/CodeSystem/icd-o-3": "ICD-O-3",
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation": "HL7 interpretation",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://www.whocc.no/atc": "ATC",
}


def code_label(code: Code, *valuesets: ValueSet) -> str:
    """'Display (SYSTEM code)', with the display taken from the protocol's ValueSets."""
    system, value = code
    label = f"{_SYSTEM_LABELS.get(system, system or 'no system')} {value}"
    for vs in valuesets:
        display = vs.display(code)
        if display:
            if system == _SNOMED:  # drop the semantic tag: "(disorder)", "(finding)"
                display = _SEMANTIC_TAG.sub("", display)
            return f"{display} ({label})"
    return label


def with_article(word: str) -> str:
    """'a CD19', 'an ALL', 'a lymphoma': the indefinite article for a protocol's word.

    An abbreviation read letter by letter takes 'an' when its first letter's name starts with
    a vowel sound (A, E, F, H, I, L, M, N, O, R, S, X); any other word when it starts with a
    vowel.
    """
    head = re.split(r"[\s-]", word, maxsplit=1)[0]
    if head.isupper():
        vowel_sound = head[0] in "AEFHILMNORSX"
    else:
        vowel_sound = head[:1].lower() in tuple("aeiou")
    return f"{'an' if vowel_sound else 'a'} {word}"


@dataclass(frozen=True, slots=True)
class CodeAt:
    """A code found on a Condition and where it was found (for the reason text)."""

    code: Code
    where: str  # "Condition.code" or "histology extension"


def condition_codes(condition: Resource, histology_extension: str | None) -> list[CodeAt]:
    """Codes of Condition.code plus those of the histology-morphology-behavior extension."""
    found = [CodeAt(c, "Condition.code") for c in codings(condition.get("code"))]
    if histology_extension:
        for ext in condition.get("extension") or ():
            if isinstance(ext, dict) and ext.get("url") == histology_extension:
                found += [
                    CodeAt(c, "histology extension")
                    for c in codings(ext.get("valueCodeableConcept"))
                ]
    return found


Hit = tuple[Resource, CodeAt]  # a Condition and the code that matched


def first_match(codes: Iterable[CodeAt], valueset: ValueSet) -> CodeAt | None:
    return next((c for c in codes if c.code in valueset.codes), None)


def usable_conditions(ctx: Context) -> tuple[list[Resource], list[Resource]]:
    """(usable, excluded): Conditions refuted or entered in error are not evidence.

    A Condition not known on the evaluation date is left out silently, like a result after
    it: it is not part of this evaluation.
    """
    excluded_status = set(ctx.protocol.general["condition_excluded_verification"])
    usable: list[Resource] = []
    excluded: list[Resource] = []
    for condition in ctx.record.conditions:
        if _after(condition, ctx.as_of, ctx.record.patient.get("birthDate")):
            continue
        status = {code for _, code in codings(condition.get("verificationStatus"))}
        (excluded if status & excluded_status else usable).append(condition)
    return usable, excluded


def _after(condition: Resource, as_of: date, birth: Any) -> bool:
    """Onset certainly after ``as_of``; with no lower bound on the onset (none, a text, an
    unreadable one), recorded certainly after it (not yet known then)."""
    onset = onset_time(condition, birth)
    if onset is not None and onset.earliest is not None:
        return onset.earliest > as_of
    recorded = element_time(condition, "recordedDate")
    return recorded is not None and recorded.earliest is not None and recorded.earliest > as_of


def verification(condition: Resource, ctx: Context) -> tuple[bool, str]:
    """(counts, caveat): confirmed counts; absent counts with a caveat; anything else not.

    The statuses that confirm come from the protocol; a provisional, differential or
    unconfirmed diagnosis is still a question, and an unreadable status is not a confirmation.
    """
    confirmed = set(ctx.protocol.general["condition_confirmed_verification"])
    if condition.get("verificationStatus") is None:
        return True, "verification status not recorded"
    codes = [code for _, code in codings(condition.get("verificationStatus"))]
    if set(codes) & confirmed:
        return True, ""
    return False, f"verification status: {', '.join(codes) if codes else 'unreadable'}"


def onset_time(condition: Resource, birth: Any = None) -> When | None:
    """Condition.onset[x] as an interval (a Period spans both ends, an age is placed from
    ``birth``, a text may be any time); None when no onset is recorded."""
    return element_time(condition, "onset[x]", birth)


def _describe(ctx: Context, condition: Resource, hit: CodeAt, *valuesets: ValueSet) -> str:
    where = "in" if hit.where == "Condition.code" else f"in the {hit.where} of"
    text = f"{code_label(hit.code, *valuesets)} {where} {ctx.record.ref(condition).reference}"
    onset = onset_time(condition, ctx.record.patient.get("birthDate"))
    if onset is not None and not onset.unknown:
        text += f" (onset {onset.text})"
    _, caveat = verification(condition, ctx)
    return f"{text} ({caveat})" if caveat else text


def _listed(items: list[str], limit: int = 3) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


@rule("diagnosis", reads=("Condition",), params=DiagnosisParams)
def diagnosis(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    p = criterion.params
    confirmed = ctx.protocol.valueset(p["confirmed_valueset"])
    unstated = ctx.protocol.valueset(p["lineage_unstated_valueset"])
    extension = p.get("histology_extension")
    need_diagnosis = DataRequirement(
        "Condition",
        confirmed.url,
        f"{criterion.title}: a Condition coded as {p['confirmed_disease_long']} "
        "(Condition.code or the histology-morphology-behavior extension)",
    )
    conditions, excluded = usable_conditions(ctx)
    coded = [(c, condition_codes(c, extension)) for c in conditions]

    hits = _hits(coded, confirmed)
    lineage = _hits(coded, unstated)
    other = _hits(coded, ctx.protocol.valueset(p["other_lineage_valueset"]))
    if other and (hits or lineage):
        return _conflicting_lineage(criterion, ctx, hits + lineage, other, need_diagnosis)

    verified, doubtful = _split_verified(ctx, hits)
    if verified:
        return met(
            criterion.code,
            f"{p['confirmed_disease']} diagnosis recorded: "
            + _listed([_describe(ctx, c, h, confirmed) for c, h in verified]),
            _refs(ctx, (c for c, _ in verified)),
        )

    lineage_verified, lineage_doubtful = _split_verified(ctx, lineage)
    if lineage_verified:
        return _unstated_lineage(criterion, ctx, lineage_verified, unstated, need_diagnosis)

    if doubtful or lineage_doubtful:
        return _unconfirmed(criterion, ctx, doubtful + lineage_doubtful, need_diagnosis)

    if not conditions:
        why = "no Condition in the record"
        if ctx.record.conditions:
            why = f"no Condition known on or before {ctx.as_of} (by onset, else record date)"
        if excluded:
            why = f"every Condition in the record ({len(excluded)}) is refuted or entered in error"
        return undetermined(
            criterion.code,
            f"{why}; a missing diagnosis is not evidence that there is none",
            _refs(ctx, excluded),
            [need_diagnosis],
        )

    text_only = [c for c, codes in coded if not codes]
    seen = [code_label(codes[0].code) for _, codes in coded if codes]
    if text_only:
        return undetermined(
            criterion.code,
            f"no coded {p['disease']} diagnosis; {len(text_only)} Condition(s) have no code "
            "(text only), which is not read automatically: "
            + ", ".join(ctx.record.ref(c).reference for c in text_only[:3]),
            _refs(ctx, conditions),
            [need_diagnosis],
        )
    return not_met(
        criterion.code,
        f"no {p['confirmed_disease']} or {p['disease']} diagnosis among {len(conditions)} "
        f"coded Condition(s) ({_listed(seen)})",
        _refs(ctx, conditions),
    )


def _hits(coded: list[tuple[Resource, list[CodeAt]]], valueset: ValueSet) -> list[Hit]:
    """The Conditions with a code of ``valueset``, each with the first such code."""
    return [(c, h) for c, codes in coded if (h := first_match(codes, valueset))]


def _split_verified(ctx: Context, hits: list[Hit]) -> tuple[list[Hit], list[Hit]]:
    """(counting, not counting) by verification status."""
    counting: list[Hit] = []
    not_counting: list[Hit] = []
    for hit in hits:
        (counting if verification(hit[0], ctx)[0] else not_counting).append(hit)
    return counting, not_counting


def _lineage_valuesets(criterion: CriterionDef, ctx: Context) -> tuple[ValueSet, ...]:
    """The ValueSets whose displays name a diagnosis in a reason."""
    keys = ("confirmed_valueset", "lineage_unstated_valueset", "other_lineage_valueset")
    return tuple(ctx.protocol.valueset(criterion.params[k]) for k in keys)


def _unconfirmed(
    criterion: CriterionDef, ctx: Context, hits: list[Hit], need: DataRequirement
) -> CriterionResult:
    """A diagnosis (e.g. ALL) recorded only as provisional, differential or unconfirmed."""
    vs = _lineage_valuesets(criterion, ctx)
    shown = _listed([_describe(ctx, c, h, *vs) for c, h in hits])
    return undetermined(
        criterion.code,
        f"{criterion.params['disease']} diagnosis recorded but not confirmed: {shown}; a "
        "provisional, differential or unconfirmed diagnosis is not a diagnosis",
        _refs(ctx, (c for c, _ in hits)),
        [need],
    )


def _conflicting_lineage(
    criterion: CriterionDef,
    ctx: Context,
    hits: list[Hit],
    other: list[Hit],
    need: DataRequirement,
) -> CriterionResult:
    """B-ALL or unstated-lineage ALL next to another lineage (T-ALL): the lineage is unclear."""
    vs = _lineage_valuesets(criterion, ctx)
    shown = _listed([_describe(ctx, c, h, *vs) for c, h in hits])
    others = _listed([_describe(ctx, c, h, *vs) for c, h in other])
    return undetermined(
        criterion.code,
        f"conflicting lineage: {others} is recorded as well as {shown}; the "
        f"{criterion.params['lineage']} lineage is not taken as shown while another lineage is "
        "recorded",
        _refs(ctx, (c for c, _ in hits + other)),
        [need],
    )


def _unstated_lineage(
    criterion: CriterionDef,
    ctx: Context,
    lineage: list[Hit],
    unstated: ValueSet,
    need_diagnosis: DataRequirement,
) -> CriterionResult:
    """ALL without a lineage: B lineage must come from the criterion named in the protocol."""
    p = criterion.params
    by = p["lineage_confirmed_by"]
    stated = f"{p['disease']} recorded without a stated lineage"
    wanted = f"{p['lineage']} lineage"
    shown = _listed([_describe(ctx, c, h, unstated) for c, h in lineage])
    evidence = _refs(ctx, (c for c, _ in lineage))
    other: CriterionResult | None = ctx.results.get(by)
    if other is not None and other.outcome is Outcome.MET:
        return met(
            criterion.code,
            f"{stated}: {shown}; {wanted} shown by {by} ({other.reason})",
            _dedupe(evidence + other.evidence),
        )
    status = "not evaluated" if other is None else other.outcome.value.replace("-", " ")
    hint = ""
    if other is not None and other.outcome is Outcome.NOT_MET:
        negative = with_article(f"{p['lineage_marker']}-negative result")
        hint = f" ({negative} does not rule out {wanted})"
    result = undetermined(
        criterion.code,
        f"{stated}: {shown}; {wanted} is not shown because {by} is {status}{hint}",
        evidence,
        [need_diagnosis, *(other.needs if other is not None else [])],
    )
    return result


def _refs(ctx: Context, resources: Iterable[Any]) -> list[SourceRef]:
    return _dedupe([ctx.record.ref(r) for r in resources])


def _dedupe(refs: list[SourceRef]) -> list[SourceRef]:
    return list(dict.fromkeys(refs))
