"""Subscription criteria: the search URLs whose matches can change a loaded study's answer.

Derived from each protocol's ``Relevance`` (the one selection every path reads), so a
notification fires for exactly the data an evaluation would read: Observations by the
protocol's codes (``combo-code``, as pull mode searches them: a panel may carry the analyte
only on a component), DiagnosticReports by their report codes, every other type a rule reads
whole, and the Patient (a corrected birth date changes an age criterion).
"""

from __future__ import annotations

from collections.abc import Iterable

from service.evaluation_context import current_relevance
from service.fhir.queries import token_param
from service.protocol import Code, Protocol
from service.resource_kinds import KINDS

# HAPI stores Subscription.criteria in a column of limited width; long code lists are split.
MAX_CRITERIA_LENGTH = 900


def _split(rtype: str, param: str, codes: frozenset[Code], limit: int) -> list[str]:
    """``rtype?param=a,b,...`` in as few URLs as fit ``limit`` characters each."""
    out: list[str] = []
    batch: list[Code] = []
    for code in sorted(codes):
        trial = f"{rtype}?{param}={token_param([*batch, code])}"
        if batch and len(trial) > limit:
            out.append(f"{rtype}?{param}={token_param(batch)}")
            batch = []
        batch.append(code)
    if batch:
        out.append(f"{rtype}?{param}={token_param(batch)}")
    return out


def criteria_for(protocols: Iterable[Protocol], limit: int = MAX_CRITERIA_LENGTH) -> list[str]:
    """Every criterion the loaded protocols need, each once, in a stable order."""
    obs_codes: set[Code] = set()
    report_codes: set[Code] = set()
    every_observation = False
    types: dict[str, None] = {"Patient": None}
    for protocol in protocols:
        relevance = current_relevance(protocol)
        obs_codes |= relevance.codes
        report_codes |= relevance.report_codes
        every_observation |= relevance.every_observation
        types.update(dict.fromkeys(t for t in relevance.types if t != "Observation"))
    out: list[str] = []
    if every_observation:
        out.append("Observation?")
    elif obs_codes:
        param = KINDS["Observation"].code_param or "code"
        out += _split("Observation", param, frozenset(obs_codes), limit)
    if report_codes:
        out += _split("DiagnosticReport", "code", frozenset(report_codes), limit)
    out += [f"{t}?" for t in types if t != "DiagnosticReport" or not report_codes]
    return list(dict.fromkeys(out))


def subscribed_types(criteria: Iterable[str]) -> list[str]:
    """The resource types the criteria cover (the catch-up searches these)."""
    return list(dict.fromkeys(c.partition("?")[0] for c in criteria))
