"""Read a ``/getClinicalTrial`` request as the reference service does.

The body is the patient Bundle itself (what the reference handler reads), or its documented
form ``{"patientData": Bundle}`` (the Bundle may also be a JSON string). Search parameters
ride in a ``Parameters`` resource inside the Bundle; it is taken out before evaluation.
Anything else is a :class:`MatchRequestError` (400 ``{"error": ...}`` on this route).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.pipeline import parse_json
from service.record import InputError

SEARCH_PARAMETERS = ("zipCode", "travelRadius", "phase", "recruitmentStatus", "includeIneligible")


class MatchRequestError(InputError):
    """The body is not a patient Bundle (the reference service's 400)."""


@dataclass
class MatchParameters:
    """The search parameters of one request (only the ones this service knows)."""

    zip_code: str | None = None
    travel_radius: str | None = None
    phases: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    include_ineligible: bool = False


def read_request(body: bytes) -> tuple[dict[str, Any], MatchParameters]:
    """The patient Bundle (without its Parameters entries) and the search parameters."""
    try:
        resource = parse_json(body)
    except InputError:
        raise MatchRequestError("Invalid patientBundle: the body is not JSON") from None
    if isinstance(resource, dict) and "patientData" in resource and "resourceType" not in resource:
        resource = resource["patientData"]
        if isinstance(resource, str):
            try:
                resource = parse_json(resource)
            except InputError:
                raise MatchRequestError("Invalid patientBundle: patientData is not JSON") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Bundle":
        raise MatchRequestError("Invalid patientBundle")
    entries = resource.get("entry")
    if not isinstance(entries, list):
        raise MatchRequestError("Invalid patientBundle: the Bundle has no entries")
    params = MatchParameters()
    kept = []
    for entry in entries:
        inner = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(inner, dict) and inner.get("resourceType") == "Parameters":
            _read_parameters(inner, params)
        else:
            kept.append(entry)
    return {**resource, "entry": kept}, params


def _read_parameters(resource: dict[str, Any], params: MatchParameters) -> None:
    for param in resource.get("parameter") or ():
        if not isinstance(param, dict) or param.get("name") not in SEARCH_PARAMETERS:
            continue
        value = _value(param)
        if value is None:
            continue
        name = param["name"]
        if name == "zipCode":
            params.zip_code = value
        elif name == "travelRadius":
            params.travel_radius = value
        elif name == "phase":
            params.phases += _list(value)
        elif name == "recruitmentStatus":
            params.statuses += _list(value)
        elif name == "includeIneligible":
            params.include_ineligible = value.lower() == "true"


def _value(param: dict[str, Any]) -> str | None:
    """The parameter's value as text (the reference sends valueString; others are read too)."""
    for key, value in param.items():
        if key.startswith("value") and isinstance(value, str | int | float | bool):
            return str(value).lower() if isinstance(value, bool) else str(value)
    return None


def _list(value: str) -> list[str]:
    """A value, or several separated by commas (``phase-1,phase-2``)."""
    return [v.strip() for v in value.split(",") if v.strip()]
