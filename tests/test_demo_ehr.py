"""The demo EHR (``eligibility cds-demo``): trusted in demo mode only, and it shows a card."""

from __future__ import annotations

import socket
import threading
import time

import jwt
import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service import demo_ehr
from service.api import create_app
from service.cli import app as cli
from service.settings import Settings

DISCOVERY = "http://testserver/cds-services"


def _discover(settings: Settings) -> int:
    with TestClient(create_app(settings)) as client:
        token = demo_ehr.sign(DISCOVERY)
        return client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code


def test_demo_key_is_trusted_in_demo_mode():
    assert _discover(Settings(fhir_base_url=None)) == 200


@pytest.mark.parametrize(
    "extra",
    [
        {"fhir_base_url": "https://fhir.example.org/r4"},  # real patient data behind the service
        {"cds_allowed_fhir_servers": ["https://ehr.example.org/fhir"]},  # we could be made to call
        {"cds_demo_client": False},  # switched off
    ],
    ids=["fhir-base-set", "fhir-servers-allowed", "switched-off"],
)
def test_demo_key_is_refused_outside_demo_mode(extra):
    assert _discover(Settings(**({"fhir_base_url": None} | extra))) == 401


def test_only_the_public_half_is_trusted_and_the_file_says_it_is_public():
    (jwk,) = demo_ehr.demo_public_jwks()["keys"]
    assert "d" not in jwk and jwk["alg"] == "ES384"
    assert "PUBLIC" in demo_ehr.KEY_FILE and "DEMO" in demo_ehr.KEY_FILE
    token = demo_ehr.sign("http://x/cds-services")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"].endswith(".invalid")  # can never be a real EHR's issuer


def test_demo_trust_is_logged_at_start(capfd):
    """The service logs JSON lines on stderr (service/logs.py)."""
    with TestClient(create_app(Settings(fhir_base_url=None))):
        pass
    assert "PUBLIC demo EHR key" in capfd.readouterr().err
    with TestClient(create_app(Settings(fhir_base_url="https://fhir.example.org/r4"))):
        pass
    assert "demo EHR" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def live_url():
    """The real service on a free loopback port, in demo mode, as `make serve` runs it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(Settings(fhir_base_url=None)), host="127.0.0.1", port=port, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_cds_demo_prints_a_card_for_a_possible_candidate(live_url):
    result = CliRunner().invoke(cli, ["cds-demo", "demo-potential", "--url", live_url])
    assert result.exit_code == 0, result.output
    assert "Possible candidate" in result.stdout
    assert "I12" in result.stdout


def test_cds_demo_json_has_no_card_for_an_ineligible_patient(live_url):
    result = CliRunner().invoke(cli, ["cds-demo", "demo-ineligible", "--url", live_url, "--json"])
    assert result.exit_code == 0, result.output
    assert '"cards": []' in result.stdout


def test_cds_demo_with_no_service_is_one_error_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = CliRunner().invoke(
        cli, ["cds-demo", "demo-eligible", "--url", f"http://127.0.0.1:{port}"]
    )
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach")


def test_cds_demo_unknown_patient_exits_2():
    result = CliRunner().invoke(cli, ["cds-demo", "nobody"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown demo patient")


def test_the_demo_key_file_is_packaged_with_the_service():
    """The image installs a wheel: the key file must be package data, not just in the tree."""
    import fnmatch
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["service"]
    assert any(fnmatch.fnmatch(demo_ehr.KEY_FILE, g) for g in globs)
