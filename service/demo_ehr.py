"""A pretend EHR for the demo: ``eligibility cds-demo`` calls our CDS Hooks service as one would.

CDS Hooks requires a signed client JWT, so a new user could not see a card without setting up
an EHR. The demo EHR signs with a FIXED keypair shipped in this package
(``demo_ehr_key.PUBLIC-DEMO-ONLY.json``). Its private half is public on purpose, like the CDS
Hooks sandbox's key: a per-process key would have to be handed from the server to the CLI
(another process, maybe another host or container), while a fixed key works wherever both run.

Because anyone can sign with it, the service trusts it ONLY in demo mode (see
:func:`demo_trust_applies`): no FHIR base configured (so pull mode serves the built-in synthetic
patients) and no FHIR server allowed for CDS calls (so a caller holding this key can make us
evaluate only the data it sends). It can be switched off with
``ELIGIBILITY_CDS_DEMO_CLIENT=false``. The service logs a warning at start when it is on.
"""

from __future__ import annotations

import time
import uuid
from functools import cache
from importlib import resources
from typing import Any

import httpx
import jwt
import orjson

from service.errors import ServiceError
from service.settings import Settings

KEY_FILE = "demo_ehr_key.PUBLIC-DEMO-ONLY.json"
DEMO_USER = "Practitioner/demo-user"


@cache
def _key_file() -> dict[str, Any]:
    return orjson.loads((resources.files("service") / KEY_FILE).read_bytes())


def demo_issuer() -> str:
    return _key_file()["iss"]


def demo_public_jwks() -> dict[str, Any]:
    """The JWKS the service trusts in demo mode: the public half only."""
    jwk = {k: v for k, v in _key_file()["jwk"].items() if k != "d"}
    return {"keys": [jwk]}


def demo_trust_applies(settings: Settings) -> bool:
    """Whether the service may trust the public demo key (demo mode and nothing real reachable)."""
    return (
        settings.cds_demo_client
        and settings.cds_auth_enabled
        and settings.fhir_base_url is None
        and not settings.cds_allowed_fhir_servers
    )


def sign(audience: str, *, lifetime_seconds: int = 300) -> str:
    """A CDS Hooks client JWT for ``audience`` (the exact URL being called)."""
    jwk = _key_file()["jwk"]
    key = jwt.PyJWK(jwk, algorithm="ES384").key
    now = int(time.time())
    claims = {
        "iss": demo_issuer(),
        "sub": "cart-eligibility-demo-ehr",
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_seconds,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": jwk["kid"], "typ": "JWT"})


def fill_prefetch(
    templates: dict[str, str], patient_id: str, bundles: dict[str, dict]
) -> dict[str, Any]:
    """Prefetch as an EHR would fill the service's templates, from the demo patients' data."""
    from service.fhir.demo_store import DemoStore

    return DemoStore(bundles).prefetch(templates, patient_id)


class DemoEhrError(ServiceError):
    """The call could not be made or was refused; ``message`` is one line for the user."""

    def __init__(self, message: str, upstream: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.upstream = upstream


def _get(client: httpx.Client, url: str) -> httpx.Response:
    return client.get(url, headers={"Authorization": f"Bearer {sign(url)}"})


def call_patient_view(base_url: str, patient_id: str, bundles: dict[str, dict]) -> dict[str, Any]:
    """Discover the service, fill its prefetch from ``bundles``, call patient-view: the answer."""
    base = base_url.rstrip("/")
    refused = (
        "the service refused the demo EHR's JWT: it trusts the public demo key only in demo "
        "mode (no ELIGIBILITY_FHIR_BASE_URL and no ELIGIBILITY_CDS_ALLOWED_FHIR_SERVERS; "
        "ELIGIBILITY_CDS_DEMO_CLIENT not false); also check --url is the URL it is served at"
    )
    try:
        with httpx.Client(timeout=30) as client:
            discovery = _get(client, f"{base}/cds-services")
            if discovery.status_code == 401:
                raise DemoEhrError(refused)
            if discovery.status_code != 200:
                raise DemoEhrError(f"CDS discovery answered HTTP {discovery.status_code}")
            try:
                offered = discovery.json().get("services") or []
            except (ValueError, AttributeError):
                raise DemoEhrError("CDS discovery answered something unexpected") from None
            services = [s for s in offered if s.get("hook") == "patient-view"]
            if not services:
                raise DemoEhrError("the service offers no patient-view CDS service")
            service = services[0]
            url = f"{base}/cds-services/{service['id']}"
            body = {
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "context": {"userId": DEMO_USER, "patientId": patient_id},
                "prefetch": fill_prefetch(service.get("prefetch") or {}, patient_id, bundles),
            }
            headers = {"Authorization": f"Bearer {sign(url)}", "Content-Type": "application/json"}
            answer = client.post(url, content=orjson.dumps(body), headers=headers)
    except httpx.HTTPError as exc:
        raise DemoEhrError(
            f"cannot reach {base} ({type(exc).__name__}); start the service first "
            "(make serve-bg, or .venv/bin/eligibility serve)"
        ) from None
    if answer.status_code == 401:
        raise DemoEhrError(refused)
    if answer.status_code != 200:
        raise DemoEhrError(f"the CDS service answered HTTP {answer.status_code}")
    try:
        return answer.json()
    except ValueError:
        raise DemoEhrError("the CDS service answered something that is not JSON") from None
