"""CDS Hooks 2.0 wire models: service request, patient-view context, feedback, and cards.

Requests allow extra fields where the spec allows extensions (top level, context, objects the
client owns). Identifiers that end up in FHIR URLs (patientId, encounterId, userId) are checked
against the FHIR id syntax here, so nothing later can be steered to another path.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from service.inputs import FHIR_ID_RULE, bundle_envelope_error, is_bearer_token, is_fhir_id

_PREFETCH_KEY = re.compile(r"[A-Za-z0-9_\-]{1,40}")
_USER_ID_RE = re.compile(r"(Practitioner|PractitionerRole|Patient|RelatedPerson)/(.*)", re.DOTALL)


def _http_url(value: str) -> str:
    """An absolute http(s) URL with a host, kept exactly as sent (no normalisation)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return value


# -- request ----------------------------------------------------------------
class FhirAuthorization(BaseModel):
    """The bearer token a client lends for its FHIR server. Transient: never log or store it."""

    model_config = ConfigDict(extra="allow")

    access_token: SecretStr
    token_type: str
    expires_in: int = Field(ge=0)
    scope: str
    subject: str
    patient: str | None = None

    @field_validator("access_token")
    @classmethod
    def _sendable(cls, value: SecretStr) -> SecretStr:
        # A token we cannot put in a header would fail (or be retried) at the FHIR server.
        if not is_bearer_token(value.get_secret_value()):
            raise ValueError("access_token is not a Bearer token (RFC 6750 characters only)")
        return value

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("token_type must be 'Bearer'")
        return "Bearer"


class CdsServiceRequest(BaseModel):
    """``POST {baseUrl}/cds-services/{id}`` for any hook."""

    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1)
    hookInstance: str
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any | None] | None = None

    @field_validator("hookInstance")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            uuid.UUID(value)
        except ValueError:
            raise ValueError("hookInstance must be a UUID") from None
        return value

    @field_validator("fhirServer")
    @classmethod
    def _server_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("prefetch")
    @classmethod
    def _prefetched_bundles(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Each value is a resource (object) or null; a Bundle has a readable envelope."""
        for key, resource in (value or {}).items():
            name = f"prefetch '{key}'" if _PREFETCH_KEY.fullmatch(key) else "a prefetch key"
            if resource is None:
                continue
            if not isinstance(resource, dict):
                raise ValueError(f"{name} must be a FHIR resource or null")
            if resource.get("resourceType") == "Bundle":
                error = bundle_envelope_error(resource, name)
                if error is not None:
                    raise ValueError(error)
        return value

    @model_validator(mode="after")
    def _server_with_token(self) -> CdsServiceRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirServer is required when fhirAuthorization is given")
        return self


class PatientViewContext(BaseModel):
    """Context of the ``patient-view`` hook (v1.0)."""

    model_config = ConfigDict(extra="allow")

    userId: str
    patientId: str
    encounterId: str | None = None

    @field_validator("patientId", "encounterId")
    @classmethod
    def _fhir_id(cls, value: str | None) -> str | None:
        if value is not None and not is_fhir_id(value):
            raise ValueError(f"must be a FHIR resource id ({FHIR_ID_RULE})")
        return value

    @field_validator("userId")
    @classmethod
    def _user_reference(cls, value: str) -> str:
        match = _USER_ID_RE.fullmatch(value)
        if match is None or not is_fhir_id(match.group(2)):
            raise ValueError("must be Practitioner|PractitionerRole|Patient|RelatedPerson/<id>")
        return value


class PatientViewRequest(CdsServiceRequest):
    hook: Literal["patient-view"]
    # Narrows the base's context for this hook (pydantic validates it as this model); mypy
    # reads a narrower type on a mutable field as an unsafe override.
    context: PatientViewContext  # type: ignore[assignment]


# -- feedback ---------------------------------------------------------------
class Coding(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    system: str
    display: str | None = None


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=4000)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="allow")

    card: str = Field(min_length=1)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: AwareDatetime

    @model_validator(mode="after")
    def _accepted_names_suggestions(self) -> Feedback:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required when outcome is 'accepted'")
        return self


class FeedbackRequest(BaseModel):
    """``POST {baseUrl}/cds-services/{id}/feedback``."""

    model_config = ConfigDict(extra="allow")

    feedback: list[Feedback] = Field(max_length=1000)


# -- response (what cards.py produces; used to check it) ----------------------
class Source(BaseModel):
    model_config = ConfigDict(extra="allow")

    label: str = Field(min_length=1)
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(BaseModel):
    model_config = ConfigDict(extra="allow")

    label: str = Field(min_length=1)
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(BaseModel):
    model_config = ConfigDict(extra="allow")

    label: str = Field(min_length=1)
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    autolaunchable: bool | None = None


class Card(BaseModel):
    model_config = ConfigDict(extra="allow")

    uuid: str | None = None
    summary: str = Field(min_length=1, max_length=139)  # spec: "<140-character"
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None

    @model_validator(mode="after")
    def _selection_with_suggestions(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when suggestions are present")
        return self


class CdsServiceResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    cards: list[Card]
    systemActions: list[Action] | None = None
