"""The SMART helpers' own rules: which URLs, issuers, users and contexts are accepted."""

from __future__ import annotations

import pytest

from service.app import smart
from service.settings import Settings


def settings(**overrides) -> Settings:
    return Settings(_env_file=None, **overrides)


@pytest.mark.parametrize(
    "url",
    [
        "https://ehr.example.org/fhir",
        "http://127.0.0.1:8080/fhir",
        "http://localhost/fhir",
        "http://[::1]:9/fhir",
    ],
)
def test_https_or_loopback_http_urls_are_accepted(url: str) -> None:
    assert smart.check_url(url, "x") == url


@pytest.mark.parametrize(
    "url",
    [
        "http://ehr.example.org/fhir",  # cleartext off loopback
        "http://10.0.0.5/fhir",
        "https://user:pw@ehr.example.org/fhir",
        "https://ehr.example.org/fhir#frag",
        "javascript:alert(1)",
        "ftp://ehr.example.org",
        None,
    ],
)
def test_other_urls_are_refused(url) -> None:
    with pytest.raises(smart.LaunchError):
        smart.check_url(url, "x")


def test_only_allowlisted_issuers_launch() -> None:
    s = settings(app_smart_allowed_issuers=["https://ehr.example.org/fhir/"])
    assert smart.allowed_issuer(s, "https://ehr.example.org/fhir") == "https://ehr.example.org/fhir"
    for other in ("https://ehr.example.org/fhir2", "https://evil.example/fhir", "", None):
        with pytest.raises(smart.LaunchError):
            smart.allowed_issuer(s, other)


def test_scopes_for_ehr_and_standalone_launch_and_enrolment() -> None:
    ehr = smart.scopes(settings(), standalone=False).split()
    assert ehr == [
        "launch",
        "openid",
        "fhirUser",
        "patient/*.rs",
        "patient/QuestionnaireResponse.c",
    ]
    alone = smart.scopes(settings(app_enrolment_enabled=True), standalone=True).split()
    assert alone[0] == "launch/patient" and alone[-1] == "patient/ResearchSubject.cu"


@pytest.mark.parametrize(
    ("fhir_user", "expected"),
    [
        ("Practitioner/7", "Practitioner/7"),
        ("PractitionerRole/r1", "PractitionerRole/r1"),
        ("https://ehr.example.org/fhir/Practitioner/7", "Practitioner/7"),
        ("https://other.example/fhir/Practitioner/7", "https://other.example/fhir/Practitioner/7"),
        ("Patient/p1", None),
        ("RelatedPerson/r", None),
        ("https://ehr.example.org/fhir/Patient/p1", None),
        ("", None),
        (None, None),
    ],
)
def test_only_practitioners_can_author_an_attestation(fhir_user, expected) -> None:
    assert smart.author_reference(fhir_user, "https://ehr.example.org/fhir") == expected


def test_app_context_is_read_as_json_or_kept_as_short_text() -> None:
    assert smart._app_context('{"study": "u|1"}') == {"study": "u|1"}
    assert smart._app_context("plain text") == {"text": "plain text"}
    assert smart._app_context("[1, 2]") is None
    assert smart._app_context(None) is None


def test_no_client_id_no_launch() -> None:
    with pytest.raises(smart.LaunchError):
        smart.client_id(settings())
