"""Population screening against the local HAPI FHIR server (``-m hapi``, HAPI_BASE_URL).

Search-driven and Bulk ``$export`` must give the same worklist; patients without leukemia are
not evaluated; ``--write-results`` twice leaves one ResearchSubject per patient.

The file name sorts before test_fhir_server.py on purpose: that module's last test stops HAPI.
"""

from __future__ import annotations

import os
import uuid

import httpx
import orjson
import pytest

from service.fhir.loader import load_bundles
from service.protocol import default_protocol
from service.screening.outdir import OutputFolder
from service.screening.server import screen_server
from service.screening.writeback import subject_identifier_system
from service.settings import get_settings
from tests.screening_population import AS_OF, population, worklist

HAPI = os.environ.get("HAPI_BASE_URL")
pytestmark = [
    pytest.mark.hapi,
    pytest.mark.skipif(not HAPI, reason="no HAPI server: set HAPI_BASE_URL"),
]


@pytest.fixture(scope="module")
def loaded():
    """The screening population under fresh ids, and a Group of exactly those patients."""
    prefix = f"s{uuid.uuid4().hex[:6]}-"
    raw = orjson.dumps(population())
    for old in (b"demo-", b"synth-", b"no-leukemia"):
        raw = raw.replace(old, prefix.encode() + old)
    data = orjson.loads(raw)
    load_bundles(HAPI, data.items())
    group = {
        "resourceType": "Group",
        "id": f"{prefix}cohort",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in data],
    }
    with httpx.Client(timeout=30) as http:
        http.put(
            f"{HAPI.rstrip('/')}/Group/{group['id']}",
            content=orjson.dumps(group),
            headers={"Content-Type": "application/fhir+json"},
        ).raise_for_status()
    return prefix, data, group["id"]


def _screen(tmp_path, name, **kwargs):
    protocol = default_protocol()
    settings = get_settings().model_copy(update={"fhir_base_url": HAPI, "deadline_seconds": 60})
    folder = OutputFolder(tmp_path / name, protocol, AS_OF, resume=False)
    return screen_server(settings, folder, protocol, **kwargs)


def test_group_search_driven_and_bulk_give_the_same_worklist(tmp_path, loaded, monkeypatch):
    from service.screening import bulk

    # HAPI always answers Retry-After: 120; a test need not wait that long between polls.
    monkeypatch.setattr(bulk, "MAX_RETRY_AFTER", 3.0)
    prefix, data, group = loaded
    by_search = _screen(tmp_path, "search", group=group)
    by_bulk = _screen(tmp_path, "bulk", group=group, bulk=True)
    assert by_search.failed == 0 and by_bulk.failed == 0
    assert by_bulk.summary["bulk"]["typeFilter"] is True  # HAPI accepted _typeFilter
    rows = worklist(tmp_path / "search" / "worklist.csv")
    assert set(rows) == set(data)
    assert worklist(tmp_path / "bulk" / "worklist.csv") == rows
    assert rows[f"{prefix}demo-eligible"]["status"] == "eligible"


def test_condition_search_skips_patients_without_leukemia(tmp_path, loaded):
    prefix, data, _ = loaded
    _screen(tmp_path, "out")
    rows = worklist(tmp_path / "out" / "worklist.csv")
    assert f"{prefix}no-leukemia" not in rows
    assert {p for p in data if p != f"{prefix}no-leukemia"} <= set(rows)


def test_write_results_twice_leaves_one_research_subject_per_patient(tmp_path, loaded):
    prefix, data, group = loaded
    first = _screen(tmp_path, "one", group=group, write_results=True)
    second = _screen(tmp_path, "two", group=group, write_results=True)
    assert first.summary["written"]["researchSubjects"]["created"] >= 0
    assert second.summary["written"]["researchSubjects"] == {"created": 0, "updated": len(data)}
    system = subject_identifier_system(default_protocol())
    with httpx.Client(timeout=30) as http:
        for pid in data:
            found = http.get(
                f"{HAPI.rstrip('/')}/ResearchSubject",
                params={"identifier": f"{system}|{pid}", "_summary": "count"},
            ).json()
            assert found["total"] == 1, pid
