"""A SMART on FHIR EHR simulator for tests, on loopback: authorize, token, and a FHIR proxy.

It plays the EHR's side of SMART App Launch 2.x strictly enough that a sloppy client fails:
the authorization request must name our client, a registered redirect URI, ``aud`` = the FHIR
base, a ``state`` and an S256 ``code_challenge``; the token request must bring the matching
``code_verifier``, and a code works once. Consent is automatic. The token response carries
``patient``, ``fhirUser``, ``appContext`` and an id_token. FHIR requests under ``/fhir`` are
forwarded to the upstream server (HAPI, or an in-memory transport in the fast suite) only with
a token it issued; every forwarded request is recorded so tests can see whose token was used.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CLIENT_ID = "cart-eligibility-app"
_FORWARD_HEADERS = ("content-type", "accept", "if-none-exist", "prefer", "if-match")


@dataclass
class Launch:
    patient: str
    fhir_user: str = "Practitioner/sim-investigator"
    user_name: str = "Dr. Ada Simulated"
    app_context: str | None = None


@dataclass
class Forwarded:
    method: str
    path: str
    token: str | None


@dataclass
class SmartSim:
    """The simulator's state; ``app`` is the ASGI application to serve."""

    upstream: str | None = None  # FHIR base to forward to (e.g. HAPI)
    transport: httpx.AsyncBaseTransport | None = None  # or an in-process upstream
    redirect_uris: set[str] = field(default_factory=set)
    launches: dict[str, Launch] = field(default_factory=dict)
    standalone_patient: str | None = None
    base_url: str = ""  # set once serving
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    forwarded: list[Forwarded] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why requests were refused
    discoveries: int = 0  # requests for the SMART configuration

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/fhir"

    def add_launch(self, launch: Launch) -> str:
        launch_id = secrets.token_urlsafe(12)
        self.launches[launch_id] = launch
        return launch_id

    def ehr_launch_url(self, app_launch_url: str, launch_id: str) -> str:
        """What the EHR opens: the app's launch URL with ``iss`` and ``launch``."""
        return f"{app_launch_url}?{urlencode({'iss': self.fhir_base, 'launch': launch_id})}"

    # -- endpoints ---------------------------------------------------------------------------
    async def smart_configuration(self, request: Request) -> Response:
        self.discoveries += 1
        return JSONResponse(
            {
                "issuer": self.base_url,
                "authorization_endpoint": f"{self.base_url}/authorize",
                "token_endpoint": f"{self.base_url}/token",
                "grant_types_supported": ["authorization_code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
                "scopes_supported": ["openid", "fhirUser", "launch", "launch/patient"],
                "response_types_supported": ["code"],
                "capabilities": [
                    "launch-ehr",
                    "launch-standalone",
                    "client-public",
                    "context-ehr-patient",
                    "context-standalone-patient",
                    "permission-v2",
                    "sso-openid-connect",
                ],
            }
        )

    def _refuse(self, why: str, status: int = 400) -> Response:
        self.refused.append(why)
        return JSONResponse({"error": "invalid_request", "error_description": why}, status)

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("response_type") != "code":
            return self._refuse("response_type must be code")
        if q.get("client_id") != CLIENT_ID:
            return self._refuse("unknown client_id")
        redirect_uri = q.get("redirect_uri", "")
        if redirect_uri not in self.redirect_uris:
            return self._refuse("redirect_uri not registered")
        if q.get("aud", "").rstrip("/") != self.fhir_base:
            return self._refuse("aud is not this FHIR server")
        if not q.get("state"):
            return self._refuse("state missing")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return self._refuse("PKCE S256 required")
        scopes = set(q.get("scope", "").split())
        if "launch" in scopes:
            launch = self.launches.get(q.get("launch", ""))
            if launch is None:
                return self._refuse("unknown launch")
        elif "launch/patient" in scopes and self.standalone_patient:
            launch = Launch(patient=self.standalone_patient)
        else:
            return self._refuse("no launch context requested")
        code = secrets.token_urlsafe(24)
        self.codes[code] = {
            "challenge": q["code_challenge"],
            "redirect_uri": redirect_uri,
            "scope": " ".join(sorted(scopes)),
            "launch": launch,
            "expires": time.time() + 60,
        }
        sep = "&" if "?" in redirect_uri else "?"
        target = f"{redirect_uri}{sep}{urlencode({'code': code, 'state': q['state']})}"
        return RedirectResponse(target, status_code=302)

    async def token(self, request: Request) -> Response:
        form = await request.form()
        if form.get("grant_type") != "authorization_code":
            return self._refuse("unsupported grant_type")
        if form.get("client_id") != CLIENT_ID:
            return self._refuse("client_id missing or wrong (public client)")
        grant = self.codes.pop(str(form.get("code", "")), None)  # one use only
        if grant is None or grant["expires"] < time.time():
            return self._refuse("invalid or used code")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return self._refuse("redirect_uri differs from the authorization request")
        verifier = str(form.get("code_verifier", ""))
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
            return self._refuse("PKCE verifier does not match the challenge")
        launch: Launch = grant["launch"]
        access = secrets.token_urlsafe(32)
        self.tokens[access] = {"patient": launch.patient, "expires": time.time() + 3600}
        id_token = jwt.encode(
            {
                "iss": self.base_url,
                "sub": launch.fhir_user,
                "aud": CLIENT_ID,
                "fhirUser": f"{self.fhir_base}/{launch.fhir_user}",
                "name": launch.user_name,
                "iat": int(time.time()),
                "exp": int(time.time()) + 3600,
            },
            secrets.token_bytes(32),
            algorithm="HS256",
        )
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": grant["scope"],
            "patient": launch.patient,
            "fhirUser": launch.fhir_user,
            "id_token": id_token,
        }
        if launch.app_context is not None:
            body["appContext"] = launch.app_context
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def fhir(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        path = request.url.path.removeprefix("/fhir")
        granted = self.tokens.get(token or "")
        if granted is None or granted["expires"] < time.time():
            self.refused.append(f"no valid token for {request.method} {path}")
            return JSONResponse({"resourceType": "OperationOutcome"}, 401)
        self.forwarded.append(Forwarded(request.method, path, token))
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARD_HEADERS}
        target = (self.upstream or "http://upstream.invalid/fhir").rstrip("/") + path
        async with httpx.AsyncClient(transport=self.transport, timeout=30) as http:
            resp = await http.request(
                request.method,
                target,
                params=list(request.query_params.multi_items()),
                content=await request.body(),
                headers=headers,
            )
        content = resp.content
        if self.upstream:  # links in Bundles point at the upstream: make them ours
            content = content.replace(self.upstream.rstrip("/").encode(), self.fhir_base.encode())
        out = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "location")}
        return Response(content, status_code=resp.status_code, headers=out)

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/fhir/.well-known/smart-configuration", self.smart_configuration),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
                Route("/fhir/{path:path}", self.fhir, methods=["GET", "POST", "PUT", "DELETE"]),
            ]
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1 in a thread; yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
