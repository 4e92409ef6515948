"""What one evaluation reads with: the protocol, the site terminology, their selection.

The site terminology is configured once per process (service.terminology.runtime); an
evaluation takes a snapshot of it here at its start and passes it down, so what it reads
(pull searches, the lean plan, pre-translation, the record builder) cannot change half-way
and no module below consults the process-wide switch on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from service.relevance import Relevance

if TYPE_CHECKING:
    from service.protocol import Protocol
    from service.terminology.runtime import Terminology


@dataclass(frozen=True)
class EvaluationContext:
    protocol: Protocol
    site: Terminology | None = None

    @classmethod
    def current(cls, protocol: Protocol) -> EvaluationContext:
        """The context for an evaluation starting now (the configured site terminology)."""
        from service.terminology import runtime

        return cls(protocol, runtime.active())

    @cached_property
    def relevance(self) -> Relevance:
        return relevance_for(self.protocol, self.site)


def relevance_for(protocol: Protocol, site: Terminology | None) -> Relevance:
    """The selection for ``protocol`` under ``site`` (built once per protocol without one)."""
    return protocol.relevance if site is None else Relevance(protocol, site)


def current_relevance(protocol: Protocol) -> Relevance:
    """The selection under the site terminology configured now (callers with no context)."""
    return EvaluationContext.current(protocol).relevance
