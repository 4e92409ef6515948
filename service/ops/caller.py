"""Who is calling: an API key (by a fingerprint, never the key), a CDS client (JWT iss/sub),
or an anonymous client address. Rate limits and audit events are keyed by it."""

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request

from service.api_keys import require_api_key


@dataclass(frozen=True, slots=True)
class Caller:
    kind: Literal["api-key", "jwt", "anonymous"]
    id: str  # stable and not secret: "key-<fingerprint>", "jwt:<iss>|<sub>", "addr:<ip>"
    key_id: str | None = None
    iss: str | None = None
    sub: str | None = None
    address: str | None = None


def key_id(secret: str) -> str:
    """A short fingerprint that names a key in logs, metrics and audit without revealing it."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def api_caller(request: Request, _: Annotated[None, Depends(require_api_key)]) -> Caller:
    """The caller of an API-key protected endpoint (after the key was checked)."""
    address = _address(request)
    caller = Caller("anonymous", f"addr:{address}", address=address)
    if request.app.state.settings.api_keys:
        presented = request.headers.get("authorization", "").partition(" ")[2]
        kid = key_id(presented.strip())
        caller = Caller("api-key", kid, key_id=kid, address=address)
    request.state.caller = caller
    return caller


def jwt_caller(
    claims_dependency: Callable[[Request], Awaitable[dict | None]],
) -> Callable[..., Awaitable[Caller]]:
    """A dependency naming the CDS client by its verified JWT (``iss``, ``sub``)."""

    async def caller(
        request: Request, claims: Annotated[dict | None, Depends(claims_dependency)]
    ) -> Caller:
        address = _address(request)
        if not claims:  # authentication switched off (development)
            found = Caller("anonymous", f"addr:{address}", address=address)
        else:
            iss, sub = str(claims.get("iss", "")), claims.get("sub")
            sub = str(sub) if sub is not None else None
            found = Caller("jwt", f"jwt:{iss}|{sub or ''}", iss=iss, sub=sub, address=address)
        request.state.caller = found
        return found

    return caller
