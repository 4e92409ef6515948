"""The coordinator's worklist, a patient's page over every study, and per-study review and
attestation (issue 21, 3), through the app's routes (demo mode, SQLite ResultStore)."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from service.clinical.model import Outcome
from service.demo import load_demo_bundles
from service.protocol import load_protocol
from service.results import StudyResult
from service.results.redis_store import RedisResultStore
from tests.app.helpers import demo_client, hidden, status
from tests.app.worklist_setup import (
    SECOND_ID,
    SECOND_QUESTIONNAIRE,
    SEED_ID,
    csv_rows,
    screening_run,
    two_studies,
    worklist_rows,
)
from tests.protocol_copies import SEED_DIR

ALL_YES = {"I5": "true", "I9": "true", "I11": "true", "I12": "true"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worklist")
    return screening_run(tmp), two_studies(tmp)


@pytest.fixture
def client(run, tmp_path):
    out, dirs = run
    with demo_client(
        protocol_dirs=dirs,
        app_screening_output_dir=out,
        results_sqlite_path=tmp_path / "results.sqlite3",
    ) as c:
        yield c


def _store(client):
    return client.app.state.result_store


def _record(client, result: StudyResult) -> StudyResult:
    return asyncio.run(_store(client).record(result))


def test_worklist_lists_the_screening_runs_candidates_with_what_is_missing(client, run) -> None:
    out, _ = run
    page = client.get("/app/", params={"size": 500, "study": SEED_ID})
    assert page.status_code == 200, page.text
    shown = {(r["patient"], r["study"]): r for r in worklist_rows(page.text)}
    seed = load_protocol(SEED_DIR / "protocol.toml")
    top = [c.code for c in seed.top_level]
    expected = csv_rows(out)
    assert expected, "the screening run produced no rows"
    for row in expected:
        found = shown[(row["patient"], SEED_ID)]
        assert found["status"] == row["status"]
        assert found["open"] == [c for c in top if row[c] == Outcome.UNDETERMINED]
        assert "(screening)" in found["html"]
        assert f'href="/app/patients/{row["patient"]}?study={SEED_ID}"' in found["html"]
    assert "Screening run of" in page.text and f"{len(expected)} patient results" in page.text


def test_worklist_has_every_study_and_the_demo_patients_evaluated_here(client) -> None:
    rows = worklist_rows(client.get("/app/", params={"size": 500}).text)
    demo = {r["patient"] for r in rows if r["patient"].startswith("demo-")}
    assert demo, rows
    for pid in demo:  # evaluated by the app against both studies, recorded as source "app"
        studies = {r["study"]: r for r in rows if r["patient"] == pid}
        assert set(studies) == {SEED_ID, SECOND_ID}
        assert all("(app)" in r["html"] for r in studies.values())
    screened = {r["study"] for r in rows if r["patient"].startswith("scr-")}
    assert screened == {SEED_ID}  # the run screened the seed study only


@pytest.mark.parametrize("name", [SECOND_ID, "NCT00000001"])
def test_filter_by_study_by_id_or_registry_number(client, name) -> None:
    rows = worklist_rows(client.get("/app/", params={"study": name, "size": 500}).text)
    assert rows and {r["study"] for r in rows} == {SECOND_ID}


def test_filter_by_status_and_study_together(client) -> None:
    every = worklist_rows(client.get("/app/", params={"size": 500}).text)
    for wanted in ("potential-candidate", "ineligible"):
        page = client.get("/app/", params={"status": wanted, "study": SEED_ID, "size": 500})
        rows = worklist_rows(page.text)
        expected = [r for r in every if r["status"] == wanted and r["study"] == SEED_ID]
        assert rows and len(rows) == len(expected)
        assert {(r["patient"], r["status"]) for r in rows} == {
            (r["patient"], r["status"]) for r in expected
        }


@pytest.mark.parametrize(
    "params",
    [
        {"study": "no-such-trial"},
        {"status": "enrolled"},
        {"sort": "name"},
        {"order": "up"},
        {"size": "0"},
        {"size": "501"},
        {"page": "-1"},
    ],
)
def test_a_bad_worklist_query_is_a_clear_400(client, params) -> None:
    page = client.get("/app/", params=params)
    assert page.status_code == 400
    assert "Bad worklist query" in page.text


def test_sorting_by_patient_open_count_and_status(client) -> None:
    rows = worklist_rows(client.get("/app/", params={"sort": "patient", "size": 500}).text)
    keys = [(r["patient"], r["study"]) for r in rows]
    assert keys == sorted(keys)
    rows = worklist_rows(
        client.get("/app/", params={"sort": "open", "order": "desc", "size": 500}).text
    )
    counts = [r["n_open"] for r in rows]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    rows = worklist_rows(
        client.get("/app/", params={"sort": "status", "order": "asc", "size": 500}).text
    )
    statuses = [r["status"] for r in rows]
    assert statuses == sorted(statuses) and len(set(statuses)) > 1


def test_paging_serves_thousands_of_rows_a_page_at_a_time(client) -> None:
    client.get("/app/")  # the screening run and the demo patients first
    at = datetime(2026, 11, 19, 8, 0, tzinfo=UTC)
    bulk = [
        StudyResult(f"bulk-{n:04d}", SECOND_ID, "potential-candidate", at, "2026-11-19", "api")
        for n in range(1500)
    ]
    assert asyncio.run(_store(client).record_many(bulk)) == 1500
    page = client.get("/app/", params={"study": SECOND_ID, "sort": "patient", "size": 200})
    total = 1500 + len(load_demo_bundles())  # the bulk rows and every demo patient
    assert re.search(r'data-total="(\d+)"', page.text).group(1) == str(total)
    seen: list[str] = []
    pages = -(-total // 200)
    for n in range(1, pages + 1):
        html = client.get(
            "/app/", params={"study": SECOND_ID, "sort": "patient", "size": 200, "page": n}
        ).text
        rows = worklist_rows(html)
        assert len(rows) == (200 if n < pages else total - 200 * (pages - 1))
        seen.extend(r["patient"] for r in rows)
        assert ('data-page="next"' in html) == (n < pages)
    assert len(seen) == len(set(seen)) == total and seen == sorted(seen)


def test_a_newer_answer_replaces_the_screening_row_and_says_what_changed(client, run) -> None:
    out, _ = run
    client.get("/app/")
    screened = next(r for r in csv_rows(out) if r["status"] == "potential-candidate")
    pid = screened["patient"]
    later = datetime.now(UTC) + timedelta(minutes=5)
    _record(
        client,
        StudyResult(
            pid, SEED_ID, "ineligible", later, "2026-11-20", "subscription", failed_criteria=("I7",)
        ),
    )
    older = later - timedelta(days=400)
    _record(client, StudyResult(pid, SEED_ID, "eligible", older, "2025-10-16", "api"))
    rows = worklist_rows(client.get("/app/", params={"study": SEED_ID, "size": 500}).text)
    row = next(r for r in rows if r["patient"] == pid)
    assert row["status"] == "ineligible" and row["changed"]
    assert "potential-candidate -&gt; ineligible; now not met: I7" in row["html"]
    assert "(subscription)" in row["html"]


def test_a_worklist_with_a_study_column_attributes_rows_to_their_study(client, tmp_path) -> None:
    folder = tmp_path / "multi"
    folder.mkdir()
    seed = load_protocol(SEED_DIR / "protocol.toml")
    codes = [c.code for c in seed.top_level]
    head = ["patient", "study", "status", *codes, "blocking", "needed", "error"]
    lines = [",".join(head)]
    for pid, study, status_ in [
        ("multi-1", SEED_ID, "eligible"),
        ("multi-1", "NCT00000001", "potential-candidate"),
        ("multi-2", "unloaded-trial", "eligible"),
        ("multi-3", SECOND_ID, "error"),
    ]:
        values = ["met"] * len(codes)
        if status_ == "potential-candidate":
            values[4] = "undetermined"
        lines.append(",".join([pid, study, status_, *values, "", "", ""]))
    (folder / "worklist.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    client.app.state.settings.app_screening_output_dir = folder
    page = client.get("/app/", params={"size": 500})
    rows = {(r["patient"], r["study"]): r for r in worklist_rows(page.text)}
    assert rows[("multi-1", SEED_ID)]["status"] == "eligible"
    assert rows[("multi-1", SECOND_ID)]["status"] == "potential-candidate"
    assert rows[("multi-1", SECOND_ID)]["open"] == [codes[4]]
    assert not any(pid in ("multi-2", "multi-3") for pid, _ in rows)
    assert "1 could not be evaluated" in page.text and "unloaded-trial" in page.text


def test_a_patients_page_shows_every_study_side_by_side(client) -> None:
    page = client.get("/app/patients/demo-potential/studies")
    assert page.status_code == 200
    cards = re.findall(
        r'<section class="study-card status-([^"]+)" data-study="([^"]+)"(.*?)</section>',
        page.text,
        re.S,
    )
    assert [c[1] for c in cards] == [SEED_ID, SECOND_ID]
    for card_status, study, body in cards:
        assert f'data-study-status="{card_status}"' in body
        assert f'href="/app/patients/demo-potential?study={study}"' in body
        assert f'href="/app/patients/demo-potential/attest?study={study}"' in body
        assert re.findall(r'data-open-criterion="([^"]+)"', body)  # a potential candidate


def test_review_takes_study_and_shows_that_studys_criteria(client) -> None:
    page = client.get("/app/patients/demo-potential", params={"study": SECOND_ID})
    assert page.status_code == 200
    assert re.findall(r'data-status="[^"]+" data-study="([^"]+)"', page.text) == [SECOND_ID]
    assert f'href="/app/patients/demo-potential/attest?study={SECOND_ID}"' in page.text
    default = client.get("/app/patients/demo-potential").text
    assert re.findall(r'data-status="[^"]+" data-study="([^"]+)"', default) == [SEED_ID]
    missing = client.get("/app/patients/demo-potential", params={"study": "nope"})
    assert missing.status_code == 404 and "Unknown study" in missing.text


def _row_status(client, pid: str) -> dict[str, str]:
    html = client.get("/app/patients/" + pid + "/studies").text
    return dict(
        (study, s)
        for s, study in re.findall(r'class="study-card status-([^"]+)" data-study="([^"]+)"', html)
    )


def test_attesting_for_one_study_changes_only_that_studys_row(client) -> None:
    before = _row_status(client, "demo-potential")
    assert before == {SEED_ID: "potential-candidate", SECOND_ID: "potential-candidate"}
    form = client.get("/app/patients/demo-potential/attest", params={"study": SECOND_ID})
    assert f'action="/app/patients/demo-potential/attest?study={SECOND_ID}"' in form.text
    data = {
        "csrf_token": hidden(form.text, "csrf_token"),
        "submission_id": hidden(form.text, "submission_id"),
        **ALL_YES,
    }
    done = client.post(
        f"/app/patients/demo-potential/attest?study={SECOND_ID}", data=data, follow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/app/patients/demo-potential?study={SECOND_ID}"
    written = client.app.state.web_app.demo.written("QuestionnaireResponse")
    assert [qr["questionnaire"].split("|")[0] for qr in written] == [SECOND_QUESTIONNAIRE]
    QuestionnaireResponse.model_validate(written[0])  # valid R4
    after = _row_status(client, "demo-potential")
    assert after == {SEED_ID: "potential-candidate", SECOND_ID: "eligible"}
    assert status(client.get(done.headers["location"]).text) == "eligible"
    rows = worklist_rows(client.get("/app/", params={"size": 500}).text)
    mine = {r["study"]: r for r in rows if r["patient"] == "demo-potential"}
    assert mine[SECOND_ID]["status"] == "eligible" and mine[SECOND_ID]["changed"]
    assert "potential-candidate -&gt; eligible" in mine[SECOND_ID]["html"]
    assert mine[SEED_ID]["status"] == "potential-candidate" and not mine[SEED_ID]["changed"]


def test_one_study_loaded_keeps_the_single_trial_pages(tmp_path) -> None:
    """Only the seed: no study links or side-by-side button are added to the review page."""
    with demo_client(
        protocol_dirs=[SEED_DIR], results_sqlite_path=tmp_path / "r.sqlite3"
    ) as client:
        page = client.get("/app/patients/demo-potential").text
        assert 'data-action="all-studies"' not in page
        assert 'href="/app/patients/demo-potential/attest"' in page


def test_a_missing_or_unreadable_screening_run_is_said_not_fatal(client, tmp_path) -> None:
    client.app.state.settings.app_screening_output_dir = tmp_path / "not-there"
    page = client.get("/app/")
    assert page.status_code == 200 and "No screening run in" in page.text
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "worklist.csv").write_bytes(b"patient,status\nx,eligible\n")
    (broken / "run.json").write_bytes(b"{not json")
    client.app.state.settings.app_screening_output_dir = broken
    page = client.get("/app/")
    assert page.status_code == 200 and "could not be read" in page.text
    assert worklist_rows(page.text)  # the results since are still listed


@pytest.mark.multiprocess
def test_the_worklist_on_the_redis_result_store(run) -> None:
    """The same worklist with results in a real redis-server (deploy/redis/run-tests)."""
    from tests.ops_support import redis_url

    out, dirs = run
    prefix = f"test-worklist-{uuid.uuid4().hex}:"
    with demo_client(
        protocol_dirs=dirs,
        app_screening_output_dir=out,
        redis_url=redis_url(),
        state_key_prefix=prefix,
    ) as client:
        try:
            page = client.get("/app/", params={"study": SEED_ID, "sort": "patient", "size": 5})
            assert isinstance(_store(client), RedisResultStore)
            total = int(re.search(r'data-total="(\d+)"', page.text).group(1))
            assert total == len(csv_rows(out)) + 6  # the screened and the demo patients
            seen = []
            for n in range(1, -(-total // 5) + 1):
                html = client.get(
                    "/app/", params={"study": SEED_ID, "sort": "patient", "size": 5, "page": n}
                ).text
                seen.extend(r["patient"] for r in worklist_rows(html))
            assert seen == sorted(set(seen)) and len(seen) == total
        finally:
            _clear_redis(redis_url(), prefix)


def _clear_redis(url: str, prefix: str) -> None:
    """The test's keys (results, and the state store's under the same prefix) only."""
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=prefix + "*", count=500):
        client.delete(key)
    client.close()


def test_enrolment_is_per_study(client) -> None:
    """demo-eligible's attestation answers the seed's Questionnaire: eligible there, still a
    potential candidate in the second study, so only the seed study can enrol it."""
    assert _row_status(client, "demo-eligible") == {
        SEED_ID: "eligible",
        SECOND_ID: "potential-candidate",
    }
    page = client.get("/app/patients/demo-eligible", params={"study": SEED_ID}).text
    assert f'action="/app/patients/demo-eligible/enrol?study={SEED_ID}"' in page
    token = hidden(page, "csrf_token")
    refused = client.post(
        f"/app/patients/demo-eligible/enrol?study={SECOND_ID}", data={"csrf_token": token}
    )
    assert refused.status_code == 409
    done = client.post(
        f"/app/patients/demo-eligible/enrol?study={SEED_ID}", data={"csrf_token": token}
    )
    assert done.status_code == 200 and 'data-enrolment="on-study"' in done.text
    (subject,) = client.app.state.web_app.demo.written("ResearchSubject")
    assert subject["study"]["reference"] == f"ResearchStudy/{SEED_ID}"
    second = client.get("/app/patients/demo-eligible", params={"study": SECOND_ID}).text
    assert "data-enrolment=" not in second  # the seed's enrolment is not the second study's
