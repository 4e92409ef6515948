"""Small helpers for the web app tests: read the stable hooks out of a page."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.api import create_app
from service.settings import Settings


def demo_client(**overrides) -> TestClient:
    """The service in demo mode (no FHIR server), as ``make serve`` runs it."""
    return TestClient(create_app(Settings(_env_file=None, log_level="WARNING", **overrides)))


def status(html: str) -> str:
    found = re.findall(r'data-status="([^"]+)"', html)
    assert len(found) == 1, found
    return found[0]


def results(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-criterion="([^"]+)" data-result="([^"]+)"', html))


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


def row(html: str, code: str) -> str:
    """The HTML of one criterion row."""
    match = re.search(rf'<tr data-criterion="{re.escape(code)}".*?</tr>', html, re.S)
    assert match, code
    return match.group(0)


def open_form(client: TestClient, pid: str) -> tuple[str, dict[str, str]]:
    page = client.get(f"/app/patients/{pid}/attest")
    assert page.status_code == 200, page.text
    return page.text, {
        "csrf_token": hidden(page.text, "csrf_token"),
        "submission_id": hidden(page.text, "submission_id"),
    }
