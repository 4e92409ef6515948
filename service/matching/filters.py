"""Which studies a request asks about: ``recruitmentStatus`` and ``phase`` are read from the
protocols' own ResearchStudy resources (a study that names no phase does not match a phase
filter: nothing says it is in that phase)."""

from __future__ import annotations

from service.matching.request import MatchParameters
from service.protocol import Protocol


def _phases(protocol: Protocol) -> set[str]:
    phase = protocol.research_study.get("phase")
    codings = phase.get("coding") if isinstance(phase, dict) else None
    found = {c.get("code") for c in codings or () if isinstance(c, dict)}
    return {str(c).lower() for c in found if c}


def wanted(protocol: Protocol, params: MatchParameters) -> bool:
    status = str(protocol.research_study.get("status", "")).lower()
    if params.statuses and status not in {s.lower() for s in params.statuses}:
        return False
    return not params.phases or bool(_phases(protocol) & {p.lower() for p in params.phases})
