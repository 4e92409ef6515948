"""No secret and no patient id reaches ANY log line, from any logger, at DEBUG.

A whole session runs in-process with every logger at DEBUG and a capture handler on the ROOT
(the same place production's handler sits; not caplog on one logger): pull mode with SMART
backend auth and retried failures, a posted Bundle, CDS Hooks calls whose FHIR server fails
and is retried, a caller token the HTTP library refuses, a wrong API key. Then every captured
line (message, extra fields, exception text) is searched for each secret and patient id.

A second test runs ``eligibility serve`` (uvicorn) in a subprocess at DEBUG against a local
failing FHIR server and searches its stderr, access log included.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import respx
import stamina
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from service import logs
from service.api import create_app
from service.fhir.auth import BearerAuth
from service.fhir.client import ClientConfig, FhirClient
from service.fhir.errors import UpstreamError
from service.protocol import default_protocol
from service.settings import Settings
from tests.builders import bundle, lab, patient

SID = f"{default_protocol().id}-screening"
BASE = "https://fhir.test/r4"
TOKEN_URL = "https://auth.test/oauth/token"
EHR = "https://ehr.test/fhir"

API_KEY = "apikey-Q7w9zR2mXc"
WRONG_KEY = "wrongkey-Lk3pV8sTn"
SMART_TOKEN = "smartopaque-H4d8Jq2Wb"  # opaque: matches no pattern, only the registry
CDS_TOKEN = "cdstoken-Zx81NmQa4"
CDS_JWT = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
ODD_TOKEN = "oddtoken-Pq5\nInjected"
STATIC_TOKEN = "statictoken-Ur6Yc1\n"  # a trailing newline: h11 refuses to send it
PULL_PID = "pt-pull-5f2c9a"
POSTED_PID = "pt-posted-8b1e7d"
CDS_PID = "pt-cds-3a6f0c"
SECRETS = [
    API_KEY, WRONG_KEY, SMART_TOKEN, CDS_TOKEN, CDS_JWT, "oddtoken-Pq5", "statictoken-Ur6Yc1",
    PULL_PID, POSTED_PID, CDS_PID,
]  # fmt: skip


class Capture(logging.Handler):
    """Everything a root handler is given: formatted line, extras, exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.loggers: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.loggers.add(record.name)
        self.lines.append(self.format(record) + " " + repr(vars(record)))


@pytest.fixture
def capture() -> Iterator[tuple[Capture, io.StringIO]]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    json_out = io.StringIO()
    logs.configure("DEBUG", stream=json_out)  # production's JSON handler, into a buffer
    handler = Capture()
    root.addHandler(handler)
    try:
        yield handler, json_out
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "smart.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


class FailingServer:
    """A real FHIR server on 127.0.0.1 that answers 503 to everything (so we retry)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FailingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _cds_body(patient_id: str, token: str, server: str) -> dict:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": patient_id},
        "fhirServer": server,
        "fhirAuthorization": {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-client",
        },
    }


async def _send_with_token(base: str, token: str) -> None:
    async with httpx.AsyncClient() as http:
        client = FhirClient(
            http, base, auth=BearerAuth(token), config=ClientConfig(retry_attempts=3)
        )
        await client.read("Patient", PULL_PID, key="patient")


def _smart_configuration() -> dict:
    return {
        "token_endpoint": TOKEN_URL,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES384"],
        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
    }


def _fhir_answer(request: httpx.Request) -> httpx.Response:
    """Pull mode: the Patient read works after one 503; every search fails with 503."""
    if request.url.path.endswith(f"/Patient/{PULL_PID}"):
        _fhir_answer.reads += 1  # type: ignore[attr-defined]
        if _fhir_answer.reads == 1:  # type: ignore[attr-defined]
            return httpx.Response(503, text=f"busy, Authorization: Bearer {SMART_TOKEN}")
        return httpx.Response(200, json={"resourceType": "Patient", "id": PULL_PID})
    return httpx.Response(503)


@pytest.fixture
def stamina_logging() -> Iterator[None]:
    """The client logs retries with its own hook; stamina's logging hook (which logged the
    refused 'Bearer <token>' 27 times) is switched on as well, to show it cannot leak."""
    hooks = stamina.instrumentation.get_on_retry_hooks()
    stamina.instrumentation.set_on_retry_hooks([*hooks, stamina.instrumentation.LoggingOnRetryHook])
    try:
        yield
    finally:
        stamina.instrumentation.set_on_retry_hooks(hooks)


def test_a_full_session_logs_no_secret_and_no_patient_id(capture, key_file, stamina_logging):
    handler, json_out = capture
    _fhir_answer.reads = 0  # type: ignore[attr-defined]
    app = create_app(
        Settings(
            api_keys=[API_KEY],
            fhir_base_url=BASE,
            fhir_auth="smart",
            smart_client_id="elig-svc",
            smart_private_key_path=key_file,
            cds_auth_enabled=False,
            cds_allowed_fhir_servers=[EHR],
            retry_attempts=3,
            log_level="DEBUG",
        )
    )
    auth = {"Authorization": f"Bearer {API_KEY}"}
    # The client logs retries with its own hook; stamina's logging hook (which logged the
    # refused 'Bearer <token>' 27 times) is switched on as well, to show it cannot leak.
    with (
        stamina.set_testing(True, attempts=3),
        FailingServer() as local,
        respx.mock(assert_all_called=False) as mock,
        TestClient(app, raise_server_exceptions=False) as client,
    ):
        logs.configure("DEBUG", stream=json_out)  # the app's start-up configured stderr
        logging.getLogger().addHandler(handler)
        mock.route(host="127.0.0.1").pass_through()
        smart = mock.get(f"{BASE}/.well-known/smart-configuration")
        smart.respond(200, json=_smart_configuration())
        mock.post(TOKEN_URL).respond(
            200, json={"access_token": SMART_TOKEN, "token_type": "bearer", "expires_in": 300}
        )
        mock.route(url__startswith=BASE).mock(side_effect=_fhir_answer)
        mock.route(url__startswith=EHR).mock(
            side_effect=[httpx.Response(503), httpx.Response(401), httpx.Response(503)] * 20
        )

        # pull mode: SMART token, a retried read, searches failing after retries
        r = client.get(f"/Patient/{PULL_PID}/$eligibility?asOf=2026-11-20", headers=auth)
        assert r.status_code == 502
        # bundle mode with the patient named in the query
        posted = patient(pid=POSTED_PID)
        data = bundle(posted, lab("777-3", 12, "10*9/L", patient_ref=f"Patient/{POSTED_PID}"))
        r = client.post(f"/$eligibility?patient={POSTED_PID}", content=orjson.dumps(data),
                        headers={**auth, "Content-Type": "application/fhir+json"})  # fmt: skip
        assert r.status_code == 200
        # a wrong API key
        wrong = {"Authorization": f"Bearer {WRONG_KEY}"}
        r = client.get(f"/Patient/{PULL_PID}/$eligibility", headers=wrong)
        assert r.status_code == 401
        # CDS Hooks: the EHR's server fails (retried), with an opaque token and a JWT
        for token in (CDS_TOKEN, CDS_JWT):
            r = client.post(f"/cds-services/{SID}", json=_cds_body(CDS_PID, token, EHR))
            assert r.status_code == 502, r.text
        # a caller token that cannot be sent: refused before any request
        r = client.post(f"/cds-services/{SID}", json=_cds_body(CDS_PID, ODD_TOKEN, EHR))
        assert r.status_code == 400
        # a token with a newline, against a real socket: h11 refuses it, and it is retried.
        # (Settings and SMART refuse such tokens up front now; a client built by hand
        # still can send one, and no registry knows it: the patterns must catch it.)
        with pytest.raises(UpstreamError):
            asyncio.run(_send_with_token(local.url, STATIC_TOKEN))

    text = "\n".join(handler.lines) + "\n" + json_out.getvalue()
    # the session did log, from our code and from the libraries that used to leak
    assert {"stamina", "httpx", "service.fhir", "service.api"} <= handler.loggers
    assert "stamina.retry_scheduled" in text and "FHIR retry" in text
    assert "LocalProtocolError" in text
    leaks = {s: text.count(s) for s in SECRETS if s in text}
    assert not leaks, leaks
    assert "eyJ" not in text  # no JWT (our SMART assertion, the CDS JWT) in any form
    for line in json_out.getvalue().splitlines():
        orjson.loads(line)  # still one JSON object per line


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("Illegal header value b'Bearer abc.def\\n'", "abc.def"),
        ("headers={'Authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "dXNlcjpwYXNzd29yZA"),
        ('{"access_token": "opaque123456", "token_type": "bearer"}', "opaque123456"),
        ("POST /token client_assertion=abc.def.ghi&grant_type=x", "abc.def.ghi"),
        ("GET https://x.test/fhir/Observation?patient=p-99&code=1 200", "p-99"),
        ("GET /Patient/p-77/$everything", "p-77"),
        ("x-api-key: k-abc-123", "k-abc-123"),
        (f"token {CDS_JWT} used", CDS_JWT),
    ],
)
def test_patterns_remove_credentials_and_ids(line, secret):
    assert secret not in logs.scrub(line)


TOKENS = st.from_regex(r"[A-Za-z0-9\-._~+/]{8,40}=*", fullmatch=True)
TEMPLATES = [
    "Authorization: Bearer {t}",
    "headers={{'Authorization': 'Bearer {t}', 'Accept': 'x'}}",
    "[(b'authorization', b'Bearer {t}')]",
    "Illegal header value b'Bearer {t}\\n'",
    "send: Bearer {t}",
    "access_token={t}&token_type=bearer",
    '{{"access_token": "{t}", "expires_in": 300}}',
    "x-api-key: {t}",
]


@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(token=TOKENS, template=st.sampled_from(TEMPLATES))
def test_any_bearer_token_is_removed_from_the_usual_shapes(token, template):
    line = template.format(t=token)
    assert token not in logs.scrub(line), line


def test_prose_about_tokens_stays_readable():
    text = "the SMART token response is not a bearer token"
    assert "response is not" in logs.scrub(text) and "bearer token" in logs.scrub(text)


def test_registered_secrets_are_removed_in_every_escaping():
    logs.register_secret("régistered-Ω\n")
    for form in (
        "régistered-Ω\n",
        "r\\xe9gistered-\\u03a9\\n",
        "r\\xc3\\xa9gistered-\\xce\\xa9\\n",
    ):
        assert "gistered" not in logs.scrub(f"value {form} end"), form
    with logs.request_scope():
        logs.register_request_secret("pt-scope-1")
        assert "pt-scope-1" not in logs.scrub("patient pt-scope-1 seen")
    assert "pt-scope-1" in logs.scrub("patient pt-scope-1 seen")  # scoped to the request


def test_exception_messages_never_reach_a_handler(capture):
    handler, json_out = capture
    secret = "-".join(["excsecret", "Hq27", "unregistered"])  # not in the source line below
    try:
        raise ValueError(secret)
    except ValueError:
        logging.getLogger("asyncio").exception("task failed")
    text = "\n".join(handler.lines) + json_out.getvalue()
    assert "task failed" in text and "ValueError" in text and "test_log_redaction" in text
    assert secret not in text  # the frames are kept, the message is withheld


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_app_at_debug_logs_no_secret_and_no_patient_id(tmp_path):
    port = _free_port()
    with FailingServer() as local:
        env = {
            **os.environ,
            "ELIGIBILITY_LOG_LEVEL": "DEBUG",
            "ELIGIBILITY_API_KEYS": orjson.dumps([API_KEY]).decode(),
            "ELIGIBILITY_FHIR_BASE_URL": f"{local.url}/fhir",
            "ELIGIBILITY_FHIR_AUTH": "static",
            "ELIGIBILITY_FHIR_TOKEN": "statictoken-Ur6Yc1",
            "ELIGIBILITY_RETRY_ATTEMPTS": "2",
            "ELIGIBILITY_DEADLINE_SECONDS": "8",
            "ELIGIBILITY_CDS_AUTH_ENABLED": "false",
            "ELIGIBILITY_CDS_ALLOWED_FHIR_SERVERS": orjson.dumps([f"{local.url}/ehr"]).decode(),
        }
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
        log_file = (tmp_path / "stderr.log").open("wb")  # a pipe would fill up and block it
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_file,
                                cwd=tmp_path)  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None, "no server"
                    time.sleep(0.2)
            auth = {"Authorization": f"Bearer {API_KEY}"}
            with httpx.Client(base_url=base, timeout=20) as http:
                r = http.get(f"/Patient/{PULL_PID}/$eligibility?asOf=2026-11-20", headers=auth)
                assert r.status_code in (502, 504)  # 504 if the shared machine is slow
                data = orjson.dumps(bundle(patient(pid=POSTED_PID)))
                fhir_json = {**auth, "Content-Type": "application/fhir+json"}
                r = http.post(
                    f"/$eligibility?patient={POSTED_PID}", content=data, headers=fhir_json
                )
                assert r.status_code == 200
                wrong = {"Authorization": f"Bearer {WRONG_KEY}"}
                r = http.get(f"/Patient/{PULL_PID}/$eligibility", headers=wrong)
                assert r.status_code == 401
                ehr = f"{local.url}/ehr"
                r = http.post(f"/cds-services/{SID}", json=_cds_body(CDS_PID, CDS_TOKEN, ehr))
                assert r.status_code in (502, 504)  # 504 if the shared machine is slow
                r = http.post(f"/cds-services/{SID}", json=_cds_body(CDS_PID, ODD_TOKEN, ehr))
                assert r.status_code == 400
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log_file.close()
    text = (tmp_path / "stderr.log").read_text()
    access = [line for line in text.splitlines() if '"logger":"uvicorn.access"' in line]
    assert any("GET /Patient/{patient_id}/$eligibility HTTP" in line for line in access), access
    assert any("POST /cds-services/{sid} HTTP" in line for line in access), access
    assert "FHIR retry" in text
    leaks = {s: text.count(s) for s in SECRETS if s in text}
    assert not leaks, leaks
    assert "asOf=" not in text and "eyJ" not in text


@pytest.mark.parametrize(
    "text",
    [
        "GET with Bearer abc.def.ghi and secret=xyz",
        "Authorization: Bearer tok123",
        "{'authorization': 'Bearer zzz', 'access_token': \"q\"}",
    ],
)
def test_scrubbing_twice_changes_nothing(text):
    """The formatter scrubs again what the record factory scrubbed: no '[redacted]]'."""
    once = logs.scrub(text)
    assert "[redacted]" in once and "]]" not in once
    assert logs.scrub(once) == once
