"""CDS client JWT authentication: every way a token must fail, and the ways it may pass."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.cds.jwt_auth import CdsAuthError, CdsClientAuthenticator, require_cds_client
from service.settings import Settings, TrustedIssuer

ISS = "https://ehr.example.org"
AUD = "https://cds.example.org/cds-services/cd19-cart-screening"
JWKS_URL = "https://ehr.example.org/.well-known/jwks.json"
EC_KID = "ec-key-1"
RSA_KID = "rsa-key-1"

EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = ECAlgorithm if alg.startswith("ES") else RSAAlgorithm
    return {**algorithm.to_jwk(public_key, as_dict=True), "kid": kid, "use": "sig", "alg": alg}


JWKS = {
    "keys": [
        _jwk(EC_KEY.public_key(), EC_KID, "ES384"),
        _jwk(RSA_KEY.public_key(), RSA_KID, "RS384"),
    ]
}


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"cds_issuers": [TrustedIssuer(iss=ISS, jwks=JWKS)]}
    values.update(overrides)
    return Settings(_env_file=None, **values)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(
    payload: dict[str, Any] | None = None,
    *,
    key: Any = EC_KEY,
    alg: str = "ES384",
    kid: str = EC_KID,
    **headers: Any,
) -> str:
    return jwt.encode(
        payload or claims(), key, algorithm=alg, headers={"kid": kid, "typ": "JWT", **headers}
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


async def reason(auth: CdsClientAuthenticator, header: str | None, aud: str = AUD) -> str:
    with pytest.raises(CdsAuthError) as info:
        await auth.verify(header, aud)
    return info.value.reason


# -- accepted ---------------------------------------------------------------
async def test_valid_es384_token_is_accepted() -> None:
    payload = claims()
    result = await CdsClientAuthenticator(settings()).verify(f"Bearer {token(payload)}", AUD)
    assert result["jti"] == payload["jti"] and result["iss"] == ISS


async def test_valid_rs384_token_is_accepted() -> None:
    auth = CdsClientAuthenticator(settings())
    result = await auth.verify(f"Bearer {token(key=RSA_KEY, alg='RS384', kid=RSA_KID)}", AUD)
    assert result["aud"] == AUD


async def test_audience_list_containing_the_url_is_accepted() -> None:
    bearer = f"Bearer {token(claims(aud=['https://other.example', AUD]))}"
    result = await CdsClientAuthenticator(settings()).verify(bearer, AUD)
    assert AUD in result["aud"]


# -- rejected ---------------------------------------------------------------
async def test_expired_token() -> None:
    now = int(time.time())
    bearer = f"Bearer {token(claims(iat=now - 900, exp=now - 300))}"
    assert await reason(CdsClientAuthenticator(settings()), bearer) == "token expired"


async def test_iat_in_the_future() -> None:
    now = int(time.time())
    bearer = f"Bearer {token(claims(iat=now + 600, exp=now + 900))}"
    assert await reason(CdsClientAuthenticator(settings()), bearer) == "token not yet valid"


async def test_nbf_in_the_future() -> None:
    bearer = f"Bearer {token(claims(nbf=int(time.time()) + 600))}"
    assert await reason(CdsClientAuthenticator(settings()), bearer) == "token not yet valid"


async def test_wrong_audience() -> None:
    bearer = f"Bearer {token(claims(aud='https://cds.example.org/cds-services/other'))}"
    assert await reason(CdsClientAuthenticator(settings()), bearer) == "audience mismatch"


async def test_unknown_issuer() -> None:
    bearer = f"Bearer {token(claims(iss='https://attacker.example'))}"
    assert await reason(CdsClientAuthenticator(settings()), bearer) == "untrusted issuer"


async def test_alg_none() -> None:
    bearer = "Bearer " + hand_made({"alg": "none", "typ": "JWT", "kid": EC_KID}, claims(), None)
    assert await reason(CdsClientAuthenticator(settings()), bearer) == "algorithm not allowed"


async def test_hs256_signed_with_the_public_key_as_secret() -> None:
    pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = hand_made({"alg": "HS256", "typ": "JWT", "kid": EC_KID}, claims(), pem)
    assert await reason(CdsClientAuthenticator(settings()), f"Bearer {forged}") == (
        "algorithm not allowed"
    )


def test_symmetric_algorithms_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        CdsClientAuthenticator(settings(cds_jwt_algorithms=["ES384", "HS256"]))
    with pytest.raises(ValueError, match="asymmetric"):
        CdsClientAuthenticator(settings(cds_jwt_algorithms=["none"]))


async def test_key_family_must_match_alg() -> None:
    # RS384 header pointing at the EC key: never handed to the RSA verifier.
    bearer = f"Bearer {token(key=RSA_KEY, alg='RS384', kid=EC_KID)}"
    assert await reason(CdsClientAuthenticator(settings()), bearer) == (
        "key type does not match alg"
    )


async def test_unknown_kid() -> None:
    bearer = f"Bearer {token(kid='not-in-jwks')}"
    assert await reason(CdsClientAuthenticator(settings()), bearer) == "unknown kid"


async def test_wrong_signing_key() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    bearer = f"Bearer {token(key=other)}"
    assert await reason(CdsClientAuthenticator(settings()), bearer) == "bad signature"


async def test_replayed_jti() -> None:
    auth = CdsClientAuthenticator(settings())
    bearer = f"Bearer {token()}"
    await auth.verify(bearer, AUD)
    assert await reason(auth, bearer) == "replayed jti"


async def test_replay_cache_forgets_expired_and_fails_closed_when_full() -> None:
    clock = FakeClock()
    auth = CdsClientAuthenticator(settings(), clock=clock, replay_cache_size=2)
    await auth.verify(f"Bearer {token()}", AUD)
    await auth.verify(f"Bearer {token()}", AUD)
    assert await reason(auth, f"Bearer {token()}") == "replay cache full"
    clock.now += 400  # past exp + leeway of both remembered tokens
    await auth.verify(f"Bearer {token()}", AUD)


async def test_missing_claims() -> None:
    auth = CdsClientAuthenticator(settings())
    for claim in ("jti", "iat", "exp"):
        bearer = f"Bearer {token(claims(**{claim: None}))}"
        assert await reason(auth, bearer) == f"missing claim {claim}"


async def test_lifetime_longer_than_an_hour() -> None:
    now = int(time.time())
    bearer = f"Bearer {token(claims(iat=now, exp=now + 7200))}"
    assert await reason(CdsClientAuthenticator(settings()), bearer) == "token lifetime too long"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_small_rsa_key_is_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwks = {"keys": [_jwk(weak.public_key(), "weak", "RS384")]}
    auth = CdsClientAuthenticator(settings(cds_issuers=[TrustedIssuer(iss=ISS, jwks=jwks)]))
    bearer = f"Bearer {token(key=weak, alg='RS384', kid='weak')}"
    assert await reason(auth, bearer) == "RSA key too small"


@pytest.mark.parametrize("header", [None, ""])
async def test_missing_header(header: str | None) -> None:
    assert await reason(CdsClientAuthenticator(settings()), header) == (
        "missing Authorization header"
    )


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "Token abc.def.ghi", "Bearer abc.def"],
)
async def test_malformed_header(header: str) -> None:
    assert (await reason(CdsClientAuthenticator(settings()), header)).startswith("malformed")


# -- remote JWKS ---------------------------------------------------------------
def remote_settings(**overrides: Any) -> Settings:
    return settings(cds_issuers=[TrustedIssuer(iss=ISS, jwks_url=JWKS_URL)], **overrides)


@respx.mock(assert_all_called=False)
async def test_jku_other_than_configured_url_is_rejected_without_fetching(
    respx_mock: respx.MockRouter,
) -> None:
    configured = respx_mock.get(JWKS_URL).mock(return_value=httpx.Response(200, json=JWKS))
    evil = respx_mock.get("https://evil.example/jwks.json").mock(
        return_value=httpx.Response(200, json=JWKS)
    )
    async with httpx.AsyncClient() as http:
        auth = CdsClientAuthenticator(remote_settings(), http)
        bearer = f"Bearer {token(jku='https://evil.example/jwks.json')}"
        assert await reason(auth, bearer) == "jku not allowed for issuer"
    assert not evil.called and not configured.called
    assert len(respx_mock.calls) == 0


async def test_jku_with_inline_jwks_only_is_rejected() -> None:
    bearer = f"Bearer {token(jku=JWKS_URL)}"
    assert await reason(CdsClientAuthenticator(settings()), bearer) == (
        "jku not allowed for issuer"
    )


@respx.mock
async def test_jwks_is_fetched_once_and_cached(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(JWKS_URL).mock(return_value=httpx.Response(200, json=JWKS))
    async with httpx.AsyncClient() as http:
        auth = CdsClientAuthenticator(remote_settings(), http)
        await auth.verify(f"Bearer {token(jku=JWKS_URL)}", AUD)  # matching jku is honoured
        await auth.verify(f"Bearer {token(key=RSA_KEY, alg='RS384', kid=RSA_KID)}", AUD)
    assert route.call_count == 1


@respx.mock
async def test_jwks_cache_expires(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(JWKS_URL).mock(return_value=httpx.Response(200, json=JWKS))
    clock = FakeClock()
    async with httpx.AsyncClient() as http:
        auth = CdsClientAuthenticator(
            remote_settings(cds_jwks_cache_seconds=300), http, clock=clock
        )
        await auth.verify(f"Bearer {token()}", AUD)
        clock.now += 301
        await auth.verify(f"Bearer {token()}", AUD)
    assert route.call_count == 2


@respx.mock
async def test_unknown_kid_refetches_at_most_once_per_interval(
    respx_mock: respx.MockRouter,
) -> None:
    new_key = ec.generate_private_key(ec.SECP384R1())
    rotated = {"keys": [*JWKS["keys"], _jwk(new_key.public_key(), "ec-key-2", "ES384")]}
    route = respx_mock.get(JWKS_URL).mock(
        side_effect=[httpx.Response(200, json=JWKS), httpx.Response(200, json=rotated)]
    )
    clock = FakeClock()
    async with httpx.AsyncClient() as http:
        auth = CdsClientAuthenticator(
            remote_settings(), http, clock=clock, refetch_interval_seconds=60
        )
        await auth.verify(f"Bearer {token()}", AUD)
        fresh = f"Bearer {token(key=new_key, kid='ec-key-2')}"
        assert await reason(auth, fresh) == "unknown kid"  # too soon to refetch
        assert route.call_count == 1
        clock.now += 61
        await auth.verify(fresh, AUD)
    assert route.call_count == 2


@respx.mock
async def test_jwks_fetch_failure_is_an_auth_failure(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(JWKS_URL).mock(return_value=httpx.Response(503))
    async with httpx.AsyncClient() as http:
        auth = CdsClientAuthenticator(remote_settings(), http)
        assert await reason(auth, f"Bearer {token()}") == "JWKS unavailable"
        assert await reason(auth, f"Bearer {token()}") == "JWKS unavailable"
    assert route.call_count == 1  # failures are not retried on every request


# -- logging and the FastAPI dependency ---------------------------------------------
async def test_log_has_reason_but_not_token(caplog: pytest.LogCaptureFixture) -> None:
    bearer_token = token(claims(aud="https://wrong.example/cds-services/x"))
    with caplog.at_level(logging.WARNING, logger="service.cds.auth"):
        await reason(CdsClientAuthenticator(settings()), f"Bearer {bearer_token}")
    text = caplog.text
    assert "audience mismatch" in text
    for part in [bearer_token, *bearer_token.split(".")]:
        assert part not in text


def _app(auth: CdsClientAuthenticator) -> FastAPI:
    app = FastAPI()
    # A default, not Annotated: with postponed annotations FastAPI cannot see a local alias.
    dependency = Depends(require_cds_client(auth))

    @app.post("/cds-services/cd19-cart-screening")
    async def service(client: dict | None = dependency) -> dict:
        return {"iss": client["iss"] if client else None}

    return app


def test_dependency_answers_401_without_details() -> None:
    client = TestClient(_app(CdsClientAuthenticator(settings())))
    bad = f"Bearer {token(claims(iss='https://attacker.example'))}"
    for headers in ({}, {"Authorization": bad}):
        response = client.post("/cds-services/cd19-cart-screening", headers=headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "Unauthorized"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_dependency_accepts_token_for_public_base_url() -> None:
    auth = CdsClientAuthenticator(settings(public_base_url="https://cds.example.org/"))
    client = TestClient(_app(auth))
    response = client.post(
        "/cds-services/cd19-cart-screening?x=1", headers={"Authorization": f"Bearer {token()}"}
    )
    assert response.status_code == 200 and response.json() == {"iss": ISS}


def test_dependency_uses_request_url_without_public_base_url() -> None:
    client = TestClient(_app(CdsClientAuthenticator(settings())))
    local = claims(aud="http://testserver/cds-services/cd19-cart-screening")
    response = client.post(
        "/cds-services/cd19-cart-screening", headers={"Authorization": f"Bearer {token(local)}"}
    )
    assert response.status_code == 200


def test_dependency_lets_everything_through_when_disabled() -> None:
    client = TestClient(_app(CdsClientAuthenticator(settings(cds_auth_enabled=False))))
    response = client.post("/cds-services/cd19-cart-screening")
    assert response.status_code == 200 and response.json() == {"iss": None}
