"""GET /metrics: Prometheus text with route templates, statuses, FHIR query types, evaluation
results and undetermined criteria, and never a patient id."""

from __future__ import annotations

import orjson
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.api import create_app
from service.settings import Settings
from tests.builders import bundle, patient

FHIR = {"Content-Type": "application/fhir+json"}


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_requests_evaluations_and_upstream_queries():
    app = create_app(Settings(_env_file=None, cds_auth_enabled=False, audit_sink="none"))
    with TestClient(app) as client:
        before = _samples(client.get("/metrics").text)
        assert client.get("/Patient/demo-stale-labs/$eligibility").status_code == 200
        assert client.get("/Patient/demo-eligible/$eligibility").status_code == 200
        assert client.get("/Patient/no-such-patient/$eligibility").status_code == 404
        posted = client.post("/$eligibility", content=b"{", headers=FHIR)
        assert posted.status_code == 400
        ok = client.post("/$eligibility", content=orjson.dumps(bundle(patient())), headers=FHIR)
        assert ok.status_code == 200
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "demo-stale-labs" not in text and "no-such-patient" not in text
    after = _samples(text)

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    route = "/Patient/{patient_id}/$eligibility"
    assert delta("eligibility_http_requests_total", method="GET", route=route, status="200") == 2
    assert delta("eligibility_http_requests_total", method="GET", route=route, status="404") == 1
    assert (
        delta("eligibility_http_requests_total", method="POST", route="/$eligibility", status="400")
        == 1
    )
    assert (
        delta(
            "eligibility_http_request_duration_seconds_count",
            method="GET",
            route=route,
            status="200",
        )
        == 2
    )
    assert delta("eligibility_evaluations_total", status="eligible") == 1
    assert delta("eligibility_evaluations_total", status="potential-candidate") >= 1
    # demo-stale-labs: labs 40 days old make the lab criteria undetermined.
    assert delta("eligibility_undetermined_total", criterion="I7-platelets") >= 1
    fhir = {"resource": "Patient", "query": "patient"}
    assert delta("eligibility_fhir_requests_total", **fhir, status="200") == 2
    assert delta("eligibility_fhir_requests_total", **fhir, status="404") == 1
    assert delta("eligibility_fhir_errors_total", **fhir, error="404") == 1
    labs = {"resource": "Observation", "query": "labs"}
    assert delta("eligibility_fhir_request_duration_seconds_count", **labs) >= 2


def test_unmatched_paths_are_one_label():
    app = create_app(Settings(_env_file=None, cds_auth_enabled=False, audit_sink="none"))
    with TestClient(app) as client:
        client.get("/Patient/secret-id-123/nothing-here")
        text = client.get("/metrics").text
    assert "secret-id-123" not in text
    assert 'route="unmatched",status="404"' in text
