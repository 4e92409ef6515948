"""How outputs name a criterion's kind: inclusions and exclusions told apart, in words and code.

Every criterion keeps one tri-state, "the patient satisfies this criterion", so an exclusion
that applies is *not met*. People read "not met" on an exclusion the wrong way round, so the
card, the review page and the screening report say "Exclusion E3 applies" instead, and the
result Bundle codes each criterion's kind. A protocol with inclusions only (the seed trial)
renders exactly as before: the kind is shown only where exclusions exist.
"""

from __future__ import annotations

from service.clinical.model import Outcome
from service.protocol import Protocol

KIND_SYSTEM = "https://fhir.cart-eligibility.example.org/CodeSystem/criterion-kind"
KIND_DISPLAY = {"inclusion": "Inclusion criterion", "exclusion": "Exclusion criterion"}
EXCLUSION_TEXT = {  # an exclusion's outcome in words (met = "satisfies" = does not apply)
    Outcome.MET: "Exclusion does not apply",
    Outcome.NOT_MET: "Exclusion applies",
    Outcome.UNDETERMINED: "Undetermined",
}


def has_exclusions(protocol: Protocol) -> bool:
    return protocol.any_exclusion


def kind_of(protocol: Protocol, code: str) -> str:
    """The criterion's kind; "inclusion" for a result the protocol does not define."""
    criterion = protocol.criteria.get(code)
    return criterion.kind if criterion is not None else "inclusion"


def is_exclusion(protocol: Protocol, code: str) -> bool:
    return kind_of(protocol, code) == "exclusion"


def kind_category(protocol: Protocol, code: str) -> dict:
    """Observation.category naming the criterion's kind (KIND_SYSTEM)."""
    kind = kind_of(protocol, code)
    return {"coding": [{"system": KIND_SYSTEM, "code": kind, "display": KIND_DISPLAY[kind]}]}
