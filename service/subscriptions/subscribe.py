"""Our R4 rest-hook Subscriptions on the FHIR server: create (idempotently), wait until the
server activates them, report the ones in ``error``, remove.

Ours are found by a ``meta.tag`` and the endpoint: another service's Subscriptions (another
endpoint) are never touched. Running ``subscribe`` twice changes nothing; a changed protocol
set or secret updates ours in place and removes the ones no longer needed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from service.subscriptions.server import FhirServer

TAG_SYSTEM = "urn:cart-eligibility:subscription"
TAG_CODE = "continuous-screening"
PAYLOAD = "application/fhir+json"  # full resource: HAPI PUTs {endpoint}/{Type}/{id}
# HAPI's channel extension for deletions (R4 Subscriptions have none): DELETE {endpoint}/...
SEND_DELETES = "http://hapifhir.io/fhir/StructureDefinition/subscription-send-delete-messages"


@dataclass(frozen=True)
class SubscriptionState:
    id: str
    criteria: str
    status: str
    error: str | None = None


def desired(criteria: str, endpoint: str, header: str) -> dict[str, Any]:
    """One Subscription as we want it (``header``: ``"Name: secret"``)."""
    return {
        "resourceType": "Subscription",
        "meta": {"tag": [{"system": TAG_SYSTEM, "code": TAG_CODE}]},
        "status": "requested",
        "reason": "Continuous trial eligibility screening (cart-eligibility)",
        "criteria": criteria,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": PAYLOAD,
            "header": [header],
            "extension": [{"url": SEND_DELETES, "valueBoolean": True}],
        },
    }


def _same(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    channel, want = existing.get("channel") or {}, wanted["channel"]
    return (
        existing.get("criteria") == wanted["criteria"]
        and channel.get("type") == want["type"]
        and channel.get("payload") == want["payload"]
        and list(channel.get("header") or ()) == want["header"]
        and _sends_deletes(channel)
        and existing.get("status") in ("requested", "active")
    )


def _sends_deletes(channel: dict[str, Any]) -> bool:
    return any(
        isinstance(e, dict) and e.get("url") == SEND_DELETES and e.get("valueBoolean") is True
        for e in channel.get("extension") or ()
    )


async def ours(server: FhirServer, endpoint: str) -> list[dict[str, Any]]:
    """Our Subscriptions for this endpoint."""
    found: list[dict[str, Any]] = []
    params = {"_tag": f"{TAG_SYSTEM}|{TAG_CODE}", "_count": "100"}
    async for page in server.pages("Subscription", params):
        found += [
            s for s in page if (s.get("channel") or {}).get("endpoint", "").rstrip("/") == endpoint
        ]
    return found


async def ensure(
    server: FhirServer, criteria: list[str], endpoint: str, header: str
) -> dict[str, list[str]]:
    """Make the server hold exactly one Subscription per criterion for ``endpoint``; returns
    the ids ``created``, ``updated``, ``kept`` and ``removed``."""
    endpoint = endpoint.rstrip("/")
    done: dict[str, list[str]] = {"created": [], "updated": [], "kept": [], "removed": []}
    by_criteria: dict[str, list[dict[str, Any]]] = {}
    for sub in await ours(server, endpoint):
        by_criteria.setdefault(sub.get("criteria", ""), []).append(sub)
    for crit in criteria:
        wanted = desired(crit, endpoint, header)
        existing = by_criteria.pop(crit, [])
        first, extra = (existing[0], existing[1:]) if existing else (None, [])
        for dup in extra:  # two of the same would deliver every change twice
            await server.delete("Subscription", dup["id"])
            done["removed"].append(dup["id"])
        if first is None:
            made = await server.create(wanted)
            done["created"].append(str(made.get("id", "?")))
        elif _same(first, wanted):
            done["kept"].append(first["id"])
        else:
            await server.update({**wanted, "id": first["id"]})
            done["updated"].append(first["id"])
    for stale in by_criteria.values():  # criteria no loaded protocol needs any more
        for sub in stale:
            await server.delete("Subscription", sub["id"])
            done["removed"].append(sub["id"])
    return done


async def remove(server: FhirServer, endpoint: str) -> list[str]:
    """Delete our Subscriptions for ``endpoint``; the ids removed."""
    removed = []
    for sub in await ours(server, endpoint.rstrip("/")):
        await server.delete("Subscription", sub["id"])
        removed.append(sub["id"])
    return removed


def states(subs: list[dict[str, Any]]) -> list[SubscriptionState]:
    return [
        SubscriptionState(
            id=str(s.get("id")),
            criteria=str(s.get("criteria")),
            status=str(s.get("status")),
            error=s.get("error"),
        )
        for s in subs
    ]


async def wait_active(
    server: FhirServer, endpoint: str, timeout: float, poll: float = 1.0
) -> list[SubscriptionState]:
    """Poll until none of ours is ``requested`` (HAPI activates on a schedule) or the time is
    up; the last states seen (the caller reports ``error`` and still-``requested`` ones)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = states(await ours(server, endpoint.rstrip("/")))
        if all(s.status != "requested" for s in seen) or time.monotonic() >= deadline:
            return seen
        await asyncio.sleep(poll)


def secret_header(name: str, secret: str) -> str:
    """``channel.header`` entry: HAPI sends each ``"Name: value"`` string as an HTTP header."""
    if not name or any(c in name for c in ": \r\n") or any(c in secret for c in "\r\n"):
        raise ValueError("the subscription header name or secret has forbidden characters")
    return f"{name}: {secret}"
