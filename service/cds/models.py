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

_FHIR_ID = r"[A-Za-z0-9\-.]{1,64}"
_FHIR_ID_RE = re.compile(rf"^{_FHIR_ID}$")
_USER_ID_RE = re.compile(rf"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/{_FHIR_ID}$")


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
        if value is not None and not _FHIR_ID_RE.match(value):
            raise ValueError("must be a FHIR resource id")
        return value

    @field_validator("userId")
    @classmethod
    def _user_reference(cls, value: str) -> str:
        if not _USER_ID_RE.match(value):
            raise ValueError("must be Practitioner|PractitionerRole|Patient|RelatedPerson/<id>")
        return value


class PatientViewRequest(CdsServiceRequest):
    hook: Literal["patient-view"]
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
