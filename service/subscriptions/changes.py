"""One change the server told us about (or the catch-up found): which resource, which
version, whose. Versions make the work idempotent: a change is evaluated once, however many
times it is seen."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import orjson

from service.inputs import is_fhir_id
from service.resource_kinds import KINDS


@dataclass(frozen=True, slots=True)
class Change:
    rtype: str
    rid: str
    version: str  # meta.versionId, else lastUpdated, else a digest of the content
    patient_id: str | None
    changed_at: datetime | None  # meta.lastUpdated (the server's clock)

    @property
    def key(self) -> str:
        return f"{self.rtype}/{self.rid}/_history/{self.version}"


def parse_instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def patient_of(resource: dict[str, Any]) -> str | None:
    """The patient a resource belongs to (a valid FHIR id), or None."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        pid = resource.get("id")
        return pid if isinstance(pid, str) and is_fhir_id(pid) else None
    kind = KINDS.get(rtype) if isinstance(rtype, str) else None
    if kind is None:
        return None
    subject = kind.subject_of(resource)
    ref = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(ref, str):
        return None
    parts = ref.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient" and is_fhir_id(parts[-1]):
        return parts[-1]
    return None


def change_of(resource: Any) -> Change | None:
    """The change a resource stands for; None when it is not a usable FHIR resource."""
    if not isinstance(resource, dict):
        return None
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not isinstance(rid, str) or not is_fhir_id(rid):
        return None
    found = resource.get("meta")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    version = meta.get("versionId") or meta.get("lastUpdated")
    if not isinstance(version, str) or not version:
        body = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
        version = "sha256-" + hashlib.sha256(body).hexdigest()[:16]
    return Change(rtype, rid, version, patient_of(resource), parse_instant(meta.get("lastUpdated")))


def deletion_of(rtype: str, rid: str, history: list[dict[str, Any]]) -> Change | None:
    """The change a deletion stands for, from the resource's history (newest first): the
    patient of its last version that had one; None when no version names a patient."""
    pid = next(
        (
            patient_of(e["resource"])
            for e in history
            if isinstance(e.get("resource"), dict) and patient_of(e["resource"]) is not None
        ),
        None,
    )
    if pid is None or not is_fhir_id(rid):
        return None
    newest = history[0] if history else {}
    found = newest.get("response")
    response: dict[str, Any] = found if isinstance(found, dict) else {}
    stamp = response.get("etag") or response.get("lastModified")
    version = f"deleted-{stamp}" if isinstance(stamp, str) and stamp else f"deleted-{uuid4().hex}"
    when = parse_instant(response.get("lastModified")) or datetime.now(UTC)
    return Change(rtype, rid, version, pid, when)
