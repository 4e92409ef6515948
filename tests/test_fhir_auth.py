"""Credentials for the FHIR server: SMART Backend Services, bearer tokens, and no leaks."""

from __future__ import annotations

import logging
import time
import traceback

import httpx
import jwt
import pytest
import respx
import stamina
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.fhir.auth import (
    ASSERTION_TYPE,
    MAX_AUTH_RESPONSE_BYTES,
    BearerAuth,
    SmartBackendAuth,
    jwk_thumbprint,
    load_private_key,
    supports_v2,
    to_v1_scopes,
)
from service.fhir.client import ClientConfig, FhirClient
from service.fhir.errors import FhirConfigError, UpstreamAuthError, UpstreamError
from service.fhir.pool import client_for
from service.settings import Settings

BASE = "https://fhir.test/r4"
TOKEN_URL = "https://auth.test/oauth/token"
PID = "p1"
SCOPES = "system/Patient.rs system/Observation.rs"
PATIENT = {"resourceType": "Patient", "id": PID}


@pytest.fixture(autouse=True)
def fast_retries():
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def smart_config(v2: bool = True) -> dict:
    caps = ["client-confidential-asymmetric"] + (["permission-v2"] if v2 else ["permission-v1"])
    return {
        "token_endpoint": TOKEN_URL,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "capabilities": caps,
    }


class TokenServer:
    """A token endpoint that hands out numbered tokens and keeps the forms it received."""

    def __init__(self, errors: list[httpx.Response] | None = None, expires_in: int = 300):
        self.forms: list[httpx.QueryParams] = []
        self.errors = list(errors or [])
        self.expires_in = expires_in

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.forms.append(httpx.QueryParams(request.content.decode()))
        if self.errors:
            return self.errors.pop(0)
        token = f"access-token-{len(self.forms)}"
        body = {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}
        return httpx.Response(200, json=body)


def smart_client(
    http: httpx.AsyncClient, key, alg="ES384", clock=time.time, kid="key-1", base=BASE
):
    auth = SmartBackendAuth(
        http, base, client_id="elig-svc", private_key=key, alg=alg, kid=kid, scopes=SCOPES,
        clock=clock,
    )  # fmt: skip
    return FhirClient(http, base, auth=auth, config=ClientConfig())


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
async def test_smart_token_flow_signs_a_valid_assertion(alg, ec_key, rsa_key):
    key = ec_key if alg == "ES384" else rsa_key
    tokens = TokenServer()
    with respx.mock() as router:
        discovery = router.get(f"{BASE}/.well-known/smart-configuration").respond(
            200, json=smart_config()
        )
        router.post(TOKEN_URL).mock(side_effect=tokens)
        fhir = router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        async with smart_client(httpx.AsyncClient(), key, alg) as client:
            before = int(time.time())
            await client.read("Patient", PID)
            await client.read("Patient", PID)  # cached: no second token request
        assert discovery.call_count == 1 and len(tokens.forms) == 1 and fhir.call_count == 2
        assert fhir.calls.last.request.headers["authorization"] == "Bearer access-token-1"

    form = tokens.forms[0]
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == ASSERTION_TYPE
    assert form["scope"] == SCOPES  # the server advertises permission-v2
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == alg and header["kid"] == "key-1"
    claims = jwt.decode(assertion, key.public_key(), algorithms=[alg], audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == "elig-svc"
    assert claims["aud"] == TOKEN_URL
    assert before < claims["exp"] <= before + 300 + 1
    assert len(claims["jti"]) >= 32


async def test_each_assertion_has_a_fresh_jti(ec_key):
    auth = SmartBackendAuth(
        httpx.AsyncClient(), BASE, client_id="c", private_key=ec_key, scopes=SCOPES
    )
    a, b = auth._assertion(TOKEN_URL), auth._assertion(TOKEN_URL)
    decode = {"algorithms": ["ES384"], "options": {"verify_signature": False}}
    assert jwt.decode(a, **decode)["jti"] != jwt.decode(b, **decode)["jti"]
    assert jwt.get_unverified_header(a)["kid"] == jwk_thumbprint(ec_key)  # default kid


async def test_refresh_once_after_a_401(ec_key):
    tokens = TokenServer()
    with respx.mock() as router:
        router.get(f"{BASE}/.well-known/smart-configuration").respond(200, json=smart_config())
        router.post(TOKEN_URL).mock(side_effect=tokens)
        fhir = router.get(f"{BASE}/Patient/{PID}").mock(
            side_effect=[httpx.Response(401), httpx.Response(200, json=PATIENT)]
        )
        async with smart_client(httpx.AsyncClient(), ec_key) as client:
            assert (await client.read("Patient", PID))["id"] == PID
        sent = [c.request.headers["authorization"] for c in fhir.calls]
    assert sent == ["Bearer access-token-1", "Bearer access-token-2"]
    assert len(tokens.forms) == 2


async def test_a_second_401_is_an_auth_error(ec_key):
    tokens = TokenServer()
    with respx.mock() as router:
        router.get(f"{BASE}/.well-known/smart-configuration").respond(200, json=smart_config())
        router.post(TOKEN_URL).mock(side_effect=tokens)
        fhir = router.get(f"{BASE}/Patient/{PID}").respond(401)
        async with smart_client(httpx.AsyncClient(), ec_key) as client:
            with pytest.raises(UpstreamAuthError, match="refused our credentials"):
                await client.read("Patient", PID)
        assert fhir.call_count == 2  # the original and exactly one retry
    assert len(tokens.forms) == 2


async def test_token_is_renewed_shortly_before_it_expires(ec_key):
    now = [1_000_000.0]
    tokens = TokenServer(expires_in=300)
    with respx.mock() as router:
        router.get(f"{BASE}/.well-known/smart-configuration").respond(200, json=smart_config())
        router.post(TOKEN_URL).mock(side_effect=tokens)
        router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        async with smart_client(httpx.AsyncClient(), ec_key, clock=lambda: now[0]) as client:
            await client.read("Patient", PID)
            now[0] += 250  # within the lifetime minus the renewal margin
            await client.read("Patient", PID)
            assert len(tokens.forms) == 1
            now[0] += 30  # 280 s: inside the 30 s margin before expiry
            await client.read("Patient", PID)
            assert len(tokens.forms) == 2


async def test_concurrent_requests_share_one_token_request(ec_key):
    import asyncio

    tokens = TokenServer()
    with respx.mock() as router:
        router.get(f"{BASE}/.well-known/smart-configuration").respond(200, json=smart_config())
        router.post(TOKEN_URL).mock(side_effect=tokens)
        router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        async with smart_client(httpx.AsyncClient(), ec_key) as client:
            await asyncio.gather(*(client.read("Patient", PID) for _ in range(8)))
    assert len(tokens.forms) == 1


async def test_v1_scopes_when_the_server_shows_no_v2(ec_key):
    tokens = TokenServer()
    with respx.mock() as router:
        router.get(f"{BASE}/.well-known/smart-configuration").respond(
            200, json=smart_config(v2=False)
        )
        router.post(TOKEN_URL).mock(side_effect=tokens)
        router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        async with smart_client(httpx.AsyncClient(), ec_key) as client:
            await client.read("Patient", PID)
    assert tokens.forms[0]["scope"] == "system/Patient.read system/Observation.read"


async def test_v1_scopes_after_invalid_scope(ec_key):
    tokens = TokenServer(errors=[httpx.Response(400, json={"error": "invalid_scope"})])
    with respx.mock() as router:
        router.get(f"{BASE}/.well-known/smart-configuration").respond(200, json=smart_config())
        router.post(TOKEN_URL).mock(side_effect=tokens)
        fhir = router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        async with smart_client(httpx.AsyncClient(), ec_key) as client:
            await client.read("Patient", PID)
        assert fhir.calls.last.request.headers["authorization"] == "Bearer access-token-2"
    assert [f["scope"] for f in tokens.forms] == [SCOPES, to_v1_scopes(SCOPES)]


async def test_refused_client_is_an_auth_error(ec_key):
    refusal = httpx.Response(
        400, json={"error": "invalid_client", "error_description": "unknown kid key-1"}
    )
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{BASE}/.well-known/smart-configuration").respond(200, json=smart_config())
        router.post(TOKEN_URL).mock(side_effect=TokenServer(errors=[refusal]))
        fhir = router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        async with smart_client(httpx.AsyncClient(), ec_key) as client:
            with pytest.raises(UpstreamAuthError, match="invalid_client") as err:
                await client.read("Patient", PID)
        assert fhir.call_count == 0
    assert err.value.http_status == 502


def test_scope_helpers():
    assert to_v1_scopes("system/Observation.rs system/Consent.cruds system/X.cud openid") == (
        "system/Observation.read system/Consent.* system/X.write openid"
    )
    assert to_v1_scopes("system/Observation.read") == "system/Observation.read"
    assert supports_v2({"capabilities": ["permission-v2"]})
    assert supports_v2({"scopes_supported": ["system/*.rs"]})
    assert not supports_v2(
        {"capabilities": ["permission-v1"], "scopes_supported": ["system/*.read"]}
    )
    assert not supports_v2({})


def test_key_must_fit_the_algorithm(ec_key, rsa_key, tmp_path):
    http = httpx.AsyncClient()
    with pytest.raises(FhirConfigError, match="RS384"):
        SmartBackendAuth(http, BASE, client_id="c", private_key=ec_key, alg="RS384", scopes="")
    with pytest.raises(FhirConfigError, match="ES384"):
        SmartBackendAuth(http, BASE, client_id="c", private_key=rsa_key, alg="ES384", scopes="")
    p256 = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(FhirConfigError, match="ES384"):
        SmartBackendAuth(http, BASE, client_id="c", private_key=p256, alg="ES384", scopes="")
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert (
        load_private_key(pem).public_key().public_numbers() == ec_key.public_key().public_numbers()
    )
    (tmp_path / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    with pytest.raises(FhirConfigError, match="cannot read") as err:
        load_private_key(tmp_path / "bad.pem")
    assert "nope" not in str(err.value)


# -- secrets never leak ---------------------------------------------------------------------


async def test_tokens_and_assertions_never_appear_in_logs_or_errors(ec_key, caplog):
    caplog.set_level(logging.DEBUG)
    static = "static-SECRET-token-4711"
    assertions: list[str] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        assertions.append(httpx.QueryParams(request.content.decode())["client_assertion"])
        return httpx.Response(200, json={"access_token": "smart-SECRET-1", "token_type": "Bearer"})

    texts: list[str] = []
    with respx.mock() as router:
        router.get(f"{BASE}/.well-known/smart-configuration").respond(200, json=smart_config())
        router.post(TOKEN_URL).mock(side_effect=token_endpoint)
        router.get(f"{BASE}/Patient/{PID}").respond(401, text=f"bad token {static}")
        clients = [
            FhirClient(httpx.AsyncClient(), BASE, auth=BearerAuth(static)),
            smart_client(httpx.AsyncClient(), ec_key),
        ]
        for client in clients:
            texts.append(repr(client))
            async with client:
                with pytest.raises(UpstreamAuthError) as err:
                    await client.read("Patient", PID)
            texts += [str(err.value), repr(err.value)]
            texts.append("".join(traceback.format_exception(err.value)))

    assert assertions, "the SMART flow ran"
    texts += [r.getMessage() + repr(r.__dict__) for r in caplog.records]
    blob = "\n".join(texts)
    assert any(r.name == "service.fhir" for r in caplog.records)
    for secret in [static, "smart-SECRET-1", *assertions]:
        assert secret not in blob


# -- which credentials go where ---------------------------------------------------------------


def settings(**kwargs) -> Settings:
    return Settings(_env_file=None, **kwargs)


async def test_configured_token_is_only_sent_to_the_configured_base():
    cfg = settings(fhir_base_url=BASE, fhir_auth="static", fhir_token="cfg-token")
    other = "https://other.test/fhir"
    with respx.mock() as router:
        ours = router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        theirs = router.get(f"{other}/Patient/{PID}").respond(200, json=PATIENT)
        async with client_for(cfg) as client:
            await client.read("Patient", PID)
        async with client_for(cfg, base_url=other) as client:
            await client.read("Patient", PID)
        async with client_for(cfg, base_url=other, bearer_token="cds-token") as client:
            await client.read("Patient", PID)
        assert ours.calls.last.request.headers["authorization"] == "Bearer cfg-token"
        assert "authorization" not in theirs.calls[0].request.headers
        assert theirs.calls[1].request.headers["authorization"] == "Bearer cds-token"


async def test_per_request_tokens_share_the_pool_but_not_the_token():
    cfg = settings(fhir_base_url=BASE)
    with respx.mock() as router:
        route = router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        a = client_for(cfg, bearer_token="token-A")
        b = client_for(cfg, bearer_token="token-B")
        c = client_for(cfg)
        assert a._http is b._http is c._http  # one pooled AsyncClient per base
        for client in (a, b, c):
            async with client:
                await client.read("Patient", PID)
        sent = [call.request.headers.get("authorization") for call in route.calls]
    assert sent == ["Bearer token-A", "Bearer token-B", None]


async def test_missing_static_token_is_a_config_error():
    with pytest.raises(FhirConfigError):
        client_for(settings(fhir_base_url=BASE, fhir_auth="static"))


async def test_service_credentials_false_never_borrows_the_configured_token():
    cfg = settings(fhir_base_url=BASE, fhir_auth="static", fhir_token="cfg-token")
    with respx.mock() as router:
        route = router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        async with client_for(cfg, base_url=BASE, service_credentials=False) as client:
            await client.read("Patient", PID)
        async with client_for(cfg, service_credentials=False) as client:
            await client.read("Patient", PID)
        own = client_for(cfg, base_url=BASE, bearer_token="cds-token", service_credentials=False)
        async with own as client:
            await client.read("Patient", PID)
        sent = [call.request.headers.get("authorization") for call in route.calls]
    assert sent == [None, None, "Bearer cds-token"]


async def test_service_credentials_false_never_starts_smart(tmp_path, ec_key):
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cfg = settings(
        fhir_base_url=BASE, fhir_auth="smart", smart_client_id="svc",
        smart_private_key_path=key_file,
    )  # fmt: skip
    with respx.mock() as router:  # no discovery or token route: any such request would fail
        route = router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        async with client_for(cfg, base_url=BASE, service_credentials=False) as client:
            await client.read("Patient", PID)
    assert "authorization" not in route.calls.last.request.headers


# -- no tokens in clear text -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "token_url"),
    [
        (BASE, "http://auth.test/oauth/token"),  # https FHIR base, http token endpoint
        ("http://fhir.test/r4", "http://fhir.test/oauth/token"),  # http, but not loopback
        ("http://127.0.0.1:8080/r4", "http://auth.test/oauth/token"),  # leaves the host
        (BASE, "ftp://auth.test/oauth/token"),
        (BASE, "http://[bad/token"),
    ],
)
async def test_a_clear_text_token_endpoint_is_refused(ec_key, base, token_url):
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{base}/.well-known/smart-configuration").respond(
            200, json=smart_config() | {"token_endpoint": token_url}
        )
        token = router.route(method="POST").respond(200, json={"access_token": "t"})
        fhir = router.get(f"{base}/Patient/{PID}").respond(200, json=PATIENT)
        async with smart_client(httpx.AsyncClient(), ec_key, base=base) as client:
            with pytest.raises(UpstreamError, match="token endpoint|token_endpoint"):
                await client.read("Patient", PID)
    assert token.call_count == 0 and fhir.call_count == 0


@pytest.mark.parametrize(
    ("base", "token_url"),
    [
        ("http://localhost:8080/r4", "http://localhost:8081/token"),
        ("http://127.0.0.1:8080/r4", "http://127.0.0.1:8080/auth/token"),
        ("http://[::1]:8080/r4", "http://[::1]:9000/token"),
    ],
)
async def test_a_local_http_setup_may_use_an_http_token_endpoint(ec_key, base, token_url):
    tokens = TokenServer()
    with respx.mock() as router:
        router.get(f"{base}/.well-known/smart-configuration").respond(
            200, json=smart_config() | {"token_endpoint": token_url}
        )
        router.post(token_url).mock(side_effect=tokens)
        fhir = router.get(f"{base}/Patient/{PID}").respond(200, json=PATIENT)
        async with smart_client(httpx.AsyncClient(), ec_key, base=base) as client:
            await client.read("Patient", PID)
    assert fhir.calls.last.request.headers["authorization"] == "Bearer access-token-1"


# -- odd discovery and token responses ---------------------------------------------------------


async def test_malformed_discovery_lists_are_tolerated(ec_key):
    tokens = TokenServer()
    config = smart_config() | {"capabilities": 5, "scopes_supported": "system/Patient.rs"}
    with respx.mock() as router:
        router.get(f"{BASE}/.well-known/smart-configuration").respond(200, json=config)
        router.post(TOKEN_URL).mock(side_effect=tokens)
        router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        async with smart_client(httpx.AsyncClient(), ec_key) as client:
            await client.read("Patient", PID)
    assert tokens.forms[0]["scope"] == to_v1_scopes(SCOPES)  # no readable sign of v2


@pytest.mark.parametrize("step", ["discovery", "token"])
async def test_oversized_discovery_or_token_responses_are_refused(ec_key, step):
    async def endless():
        for _ in range(MAX_AUTH_RESPONSE_BYTES // 1000 + 10):
            yield b" " * 1000

    huge = httpx.Response(200, content=endless())
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{BASE}/.well-known/smart-configuration").mock(
            return_value=huge if step == "discovery" else httpx.Response(200, json=smart_config())
        )
        router.post(TOKEN_URL).mock(return_value=huge)
        router.get(f"{BASE}/Patient/{PID}").respond(200, json=PATIENT)
        async with smart_client(httpx.AsyncClient(), ec_key) as client:
            with pytest.raises(UpstreamError, match="response too large"):
                await client.read("Patient", PID)


async def test_a_cancelled_caller_leaves_the_token_request_to_finish(ec_key):
    """Cancelling a request inside httpcore can leak a pooled connection; the token request
    runs on by itself (bounded by httpx's timeouts) when its caller is cancelled."""
    import asyncio

    finished: list[bool] = []

    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        finished.append(True)
        return httpx.Response(200, json={"access_token": "t", "expires_in": 300})

    with respx.mock() as router:
        router.get(f"{BASE}/.well-known/smart-configuration").respond(200, json=smart_config())
        router.post(TOKEN_URL).mock(side_effect=slow_token)
        http = httpx.AsyncClient()
        auth = smart_client(http, ec_key)._auth
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await auth.headers()
        await asyncio.sleep(0.3)
        await http.aclose()
    assert finished == [True]
