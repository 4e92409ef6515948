"""Evaluate every criterion of a protocol for one patient record, as of a date."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

from service.clinical.evaluation import Evaluation
from service.clinical.model import (
    CriterionResult,
    Issue,
    Outcome,
    Severity,
    SourceRef,
    undetermined,
)
from service.clinical.rules import Context, load_all
from service.errors import NOT_DATA_ERRORS
from service.protocol import CriterionDef, Protocol, ProtocolError
from service.record import PatientRecord

log = logging.getLogger("service.clinical")


def evaluate(record: PatientRecord, protocol: Protocol, as_of: date) -> Evaluation:
    rules = load_all()
    ctx = Context(record, protocol, as_of)
    results: list[CriterionResult] = []
    for criterion in protocol.top_level:
        results.append(_run_tree(criterion, ctx, rules))

    issues = list(record.issues)
    for result in _walk(results):
        issues.extend(result.issues)
    return Evaluation(
        patient_id=record.patient_id,
        patient_reference=record.patient_reference,
        as_of=as_of,
        evaluated_at=datetime.now(UTC),
        results=results,
        issues=_dedupe(issues),
        sources=_sources(record, results),
    )


def _run_tree(criterion: CriterionDef, ctx: Context, rules) -> CriterionResult:
    """Members first (depth first, each once), then the criterion that combines them."""
    for member in criterion.members:
        _run_tree(ctx.protocol.criteria[member], ctx, rules)
    ctx.results[criterion.code] = result = _run(criterion, ctx, rules)
    return result


def _run(criterion: CriterionDef, ctx: Context, rules) -> CriterionResult:
    rule = rules.get(criterion.rule)
    if rule is None:
        raise ProtocolError(f"{criterion.code}: no evaluator for rule {criterion.rule!r}")
    try:
        result = rule.evaluate(criterion, ctx)
    except NOT_DATA_ERRORS:
        raise  # a bug of the protocol or the set-up: never passed off as unreadable data
    except (AttributeError, TypeError, KeyError, ValueError, IndexError) as exc:
        # Input shapes are checked when the record is built; this is the last line of
        # defence: one criterion becomes undetermined, never the whole evaluation a 500.
        log.error("rule failed", extra={"criterion": criterion.code, "error": type(exc).__name__})
        result = undetermined(
            criterion.code, "could not be evaluated: the input holds data this rule cannot read"
        )
        result.issues.append(
            Issue(Severity.ERROR, "exception", f"{criterion.code}: unreadable input data")
        )
        return result
    feeds = _feeds(criterion) | rule.reads
    if result.outcome is Outcome.UNDETERMINED:
        return result
    if ctx.record.is_truncated(*feeds):
        # A capped server search may have hidden the result that matters.
        result.outcome = Outcome.UNDETERMINED
        result.reason = f"{result.reason} — but the server search was truncated, so unconfirmed"
        result.issues.append(
            Issue(Severity.WARNING, "too-costly", f"{criterion.code}: input search truncated")
        )
    elif ctx.record.is_unreadable(*feeds):
        # A malformed or conflicting input resource may be the one that matters.
        result.outcome = Outcome.UNDETERMINED
        result.reason = (
            f"{result.reason} — but an input resource for this criterion could not be read "
            "(see warnings), so unconfirmed"
        )
    elif (why := ctx.record.held_open(*feeds)) is not None:
        # A linked or replaced patient record may hold the result that matters.
        result.outcome = Outcome.UNDETERMINED
        result.reason = f"{result.reason} — but {why}, so unconfirmed"
    return result


_FEEDS: dict[int, tuple[CriterionDef, frozenset[str]]] = {}


def _feeds(criterion: CriterionDef) -> frozenset[str]:
    """The ValueSets a criterion reads (its parameters ending in valueset/valuesets), worked
    out once per criterion object."""
    cached = _FEEDS.get(id(criterion))
    if cached is not None and cached[0] is criterion:
        return cached[1]
    out: set[str] = set()
    for key, value in criterion.params.items():
        if key.endswith("valueset"):
            out.add(value)
        elif key.endswith("valuesets"):
            out.update(value)
    _FEEDS[id(criterion)] = (criterion, frozenset(out))
    return frozenset(out)


def _walk(results: list[CriterionResult]):
    for r in results:
        yield r
        yield from _walk(r.members)


def _sources(record: PatientRecord, results: list[CriterionResult]) -> list[SourceRef]:
    seen: dict[str, SourceRef] = {record.patient_reference: record.patient_ref}
    for result in _walk(results):
        for ref in result.evidence:
            seen.setdefault(ref.reference, ref)
    return list(seen.values())


def _dedupe(issues: list[Issue]) -> list[Issue]:
    return list(dict.fromkeys(issues))
