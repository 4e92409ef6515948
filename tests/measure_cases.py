"""Shared helpers for the computed / range / history / event rule tests (the seed copy with
criteria C1, C2, R1, H1, T1, E3 and E4 of ``protocol_copies.measures_protocol``)."""

from __future__ import annotations

from datetime import date, timedelta

from fhir.resources.R4B.bundle import Bundle

from service.clinical.engine import evaluate
from service.clinical.model import CriterionResult
from service.protocol import Protocol
from service.record import record_from_bundle
from tests.builders import AS_OF, bundle, lab, patient

__all__ = ["AS_OF", "ago", "run", "creatinine", "weight", "egfr", "uacr"]


def ago(days: int) -> date:
    return AS_OF - timedelta(days=days)


TEN_DAYS_AGO = ago(10)
FIVE_DAYS_AGO = ago(5)


def run(
    protocol: Protocol, code: str, *resources: dict, who: dict | None = None
) -> CriterionResult:
    """Evaluate one criterion on a valid R4 Bundle of ``who`` (default: an adult, no gender)."""
    data = bundle(who or patient(), *resources)
    Bundle.model_validate(data)  # test data is valid R4
    record = record_from_bundle(data, protocol)
    found = [r for r in evaluate(record, protocol, AS_OF).results if r.code == code]
    assert found, code
    return found[0]


def creatinine(value: float, unit: str = "mg/dL", day: date | str = TEN_DAYS_AGO, **kw) -> dict:
    return lab("2160-0" if unit == "mg/dL" else "14682-9", value, unit, day, **kw)


def weight(value: float, unit: str = "kg", day: date | str = FIVE_DAYS_AGO, **kw) -> dict:
    return lab("29463-7", value, unit, day, **kw)


def egfr(value: float, day: date | str = TEN_DAYS_AGO, code: str = "98979-8", **kw) -> dict:
    return lab(code, value, "mL/min/{1.73_m2}", day, **kw)


def uacr(value: float, unit: str = "mg/g", day: date | str = TEN_DAYS_AGO, **kw) -> dict:
    return lab("9318-7" if unit == "mg/g" else "14958-3", value, unit, day, **kw)
