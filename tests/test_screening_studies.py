"""Screening several studies in one pass (issue 21, 4): one row per patient and study that
agrees with screening each study alone, each patient decoded once, a summary and report
section and a Group per study, ``$screen`` with ``study``."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.api import create_app
from service.cli import app
from service.protocol import default_protocol, load_protocol
from service.record import InputError
from service.screening import http as screen_http
from service.screening import work
from service.screening.outdir import OutputFolder
from service.screening.runner import screen_ndjson
from service.screening.server import screen_server
from service.settings import Settings, get_settings
from tests.protocol_copies import SECOND_ID, SECOND_NCT, SEED_DIR, edit_toml, second_protocol
from tests.screening_population import AS_OF, normalise, population, write_ndjson
from tests.screening_server import LoopbackFhir, serving

runner = CliRunner()
SEED_ID = "cd19-cart-rr-ball"
STRICT_PLATELETS = 'threshold = { value = 400, unit = "10*9/L" }'


@pytest.fixture(scope="module")
def bundles():
    return population()


@pytest.fixture(scope="module")
def second_dir(tmp_path_factory) -> Path:
    """The seed's criteria under another id and NCT number, platelets >= 400 (not 30)."""
    folder = second_protocol(tmp_path_factory.mktemp("studies") / "second")
    edit_toml(folder, 'threshold = { value = 30, unit = "10*9/L" }', STRICT_PLATELETS)
    return folder


@pytest.fixture
def two_studies(second_dir, monkeypatch):
    monkeypatch.setenv(
        "ELIGIBILITY_PROTOCOL_DIRS", orjson.dumps([str(SEED_DIR), str(second_dir)]).decode()
    )
    get_settings.cache_clear()
    yield [default_protocol(), load_protocol(second_dir / "protocol.toml")]
    get_settings.cache_clear()


def _screen(src: Path, out: Path, *extra: str):
    args = ["screen", "--ndjson", str(src), "--out", str(out), "--as-of", str(AS_OF)]
    return runner.invoke(app, [*args, "--no-progress", *extra])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _results(path: Path) -> dict[tuple[str, str], object]:
    """results.ndjson as (study canonical, patient) -> normalised Bundle, each once."""
    found: dict[tuple[str, str], object] = {}
    for line in path.read_bytes().splitlines():
        bundle = orjson.loads(line)
        subject = bundle["entry"][0]["resource"]
        key = (subject["study"]["reference"], subject["individual"]["reference"])
        assert key not in found, f"{key} appears twice"
        found[key] = normalise(bundle)
    return found


def test_rows_and_results_per_study_agree_with_screening_each_study_alone(
    tmp_path, bundles, two_studies
):
    seed, second = two_studies
    src = write_ndjson(bundles, tmp_path / "export")
    both = _screen(src, tmp_path / "both", "--workers", "2")
    assert both.exit_code == 0, both.output
    assert f"  {SEED_ID}: " in both.stderr and f"  {SECOND_ID}: " in both.stderr
    rows = _rows(tmp_path / "both" / "worklist.csv")
    assert len(rows) == 2 * len(bundles)  # one row per patient and study
    statuses: dict[str, dict[str, str]] = {}
    for protocol in (seed, second):
        alone = _screen(src, tmp_path / protocol.id, "--study", protocol.id)
        assert alone.exit_code == 0, alone.output
        single = {r["patient"]: r for r in _rows(tmp_path / protocol.id / "worklist.csv")}
        mine = {r["patient"]: r for r in rows if r["study"] == protocol.id}
        assert set(mine) == set(single) == set(bundles)
        for pid, row in single.items():  # every column of the study's own file, same value
            assert {k: mine[pid][k] for k in row} == row, (protocol.id, pid)
        statuses[protocol.id] = {pid: r["status"] for pid, r in single.items()}
        alone_results = _results(tmp_path / protocol.id / "results.ndjson")
        both_results = _results(tmp_path / "both" / "results.ndjson")
        for key, result in alone_results.items():
            assert both_results[key] == result, key
    # the stricter platelet threshold of the second study really changes some answers
    assert statuses[SEED_ID]["demo-eligible"] == "eligible"
    assert statuses[SECOND_ID]["demo-eligible"] != "eligible"
    assert len(_results(tmp_path / "both" / "results.ndjson")) == 2 * len(bundles)


def test_one_study_chosen_among_several_writes_todays_files_byte_for_byte(
    tmp_path, bundles, two_studies
):
    src = write_ndjson(bundles, tmp_path / "export")
    assert _screen(src, tmp_path / "chosen", "--study", SEED_ID).exit_code == 0
    get_settings.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ELIGIBILITY_PROTOCOL_DIRS")
        get_settings.cache_clear()
        assert _screen(src, tmp_path / "plain").exit_code == 0
    for name in ("worklist.csv", "report.html"):
        chosen = (tmp_path / "chosen" / name).read_bytes()
        assert chosen == (tmp_path / "plain" / name).read_bytes(), name
    assert b"study" not in (tmp_path / "chosen" / "worklist.csv").read_bytes().split(b"\n")[0]


def test_each_patient_is_read_and_decoded_once_for_all_studies(
    tmp_path, bundles, two_studies, monkeypatch
):
    calls: list[str] = []
    real = work.decode_patient

    def spy(item):
        calls.append(item.patient_id)
        return real(item)

    monkeypatch.setattr(work, "decode_patient", spy)
    src = write_ndjson(bundles, tmp_path / "export")
    out = OutputFolder(tmp_path / "out", two_studies, AS_OF, resume=False)
    seed = two_studies[0]
    result = screen_ndjson(src, out, seed, get_settings().protocol_path, workers=1)
    assert result.failed == 0
    assert sorted(calls) == sorted(bundles)  # once per patient, not once per study
    assert sum(result.counts.values()) == 2 * len(bundles)


def test_summary_and_report_have_a_section_and_funnel_per_study(tmp_path, bundles, two_studies):
    src = write_ndjson(bundles, tmp_path / "export")
    assert _screen(src, tmp_path / "both").exit_code == 0
    summary = orjson.loads((tmp_path / "both" / "summary.json").read_bytes())
    assert [s["study"] for s in summary["studies"]] == [SEED_ID, SECOND_ID]
    assert summary["patients"] == len(bundles) and summary["rows"] == 2 * len(bundles)
    assert summary["asOf"] == str(AS_OF) and summary["evaluatedAt"]  # the worklist's "when"
    rows = _rows(tmp_path / "both" / "worklist.csv")
    for section in summary["studies"]:
        mine = [r for r in rows if r["study"] == section["study"]]
        for status, n in section["byStatus"].items():
            assert n == sum(r["status"] == status for r in mine), (section["study"], status)
        assert section["funnel"][0]["before"] == section["evaluated"] == len(bundles)
        assert [s["criterion"] for s in section["funnel"]] == [f"I{n}" for n in range(1, 13)]
    by_id = {s["study"]: s for s in summary["studies"]}
    platelets = [s for s in by_id[SECOND_ID]["funnel"] if s["criterion"] == "I7"][0]
    seed_platelets = [s for s in by_id[SEED_ID]["funnel"] if s["criterion"] == "I7"][0]
    assert platelets["excluded"] > seed_platelets["excluded"]
    page = (tmp_path / "both" / "report.html").read_text(encoding="utf-8")
    for study in (SEED_ID, SECOND_ID):
        assert f'<section data-study="{study}">' in page
    assert page.count('aria-label="screening funnel"') == 2


def test_resume_of_a_several_study_run_finishes_each_patient_and_study_once(
    tmp_path, bundles, two_studies
):
    src = write_ndjson(bundles, tmp_path / "export")
    seed = two_studies[0]
    out = OutputFolder(tmp_path / "out", two_studies, AS_OF, resume=False)
    seen = 0

    def interrupt_after_three(outcome):
        nonlocal seen
        seen += 1
        if seen == 3:  # mid-patient: the second patient has one study of two
            raise KeyboardInterrupt

    first = screen_ndjson(src, out, seed, Path(), on_outcome=interrupt_after_three)
    assert first.interrupted
    again = OutputFolder(tmp_path / "out", two_studies, AS_OF, resume=True)
    done = screen_ndjson(src, again, seed, Path())
    assert not done.interrupted and done.failed == 0
    rows = _rows(tmp_path / "out" / "worklist.csv")
    keys = [(r["study"], r["patient"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * len(bundles)
    assert len(_results(tmp_path / "out" / "results.ndjson")) == 2 * len(bundles)


def test_search_driven_screening_writes_one_group_per_study(tmp_path, bundles, two_studies):
    seed, second = two_studies
    with serving(LoopbackFhir(bundles)) as fhir:
        settings = get_settings().model_copy(update={"fhir_base_url": fhir.base})
        out = OutputFolder(tmp_path / "out", two_studies, AS_OF, resume=False)
        result = screen_server(settings, out, seed, write_group=True)
    assert result.failed == 0
    searches = [p for _, path, p in fhir.requests if path == "Condition" and "code" in dict(p)]
    assert len(searches) == 1  # both studies screen by the same ValueSet: one search
    rows = _rows(tmp_path / "out" / "worklist.csv")
    groups = {r["id"]: r for (t, _), r in fhir.written.items() if t == "Group"}
    assert set(groups) == {f"{SEED_ID}-candidates", f"{SECOND_ID}-candidates"}
    for protocol in (seed, second):
        members = {m["entity"]["reference"] for m in groups[f"{protocol.id}-candidates"]["member"]}
        expected = {
            f"Patient/{r['patient']}"
            for r in rows
            if r["study"] == protocol.id and r["status"] in ("eligible", "potential-candidate")
        }
        assert members == expected and members
    assert groups[f"{SEED_ID}-candidates"]["member"] != groups[f"{SECOND_ID}-candidates"]["member"]
    assert set(result.summary["written"]) == {SEED_ID, SECOND_ID}


def _wait(client, url, headers, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        resp = client.get(url, headers=headers)
        if resp.status_code != 202:
            return resp
        time.sleep(0.1)
    raise AssertionError("the job did not finish")


def test_screen_operation_takes_study_and_records_each_answer(tmp_path, two_studies, monkeypatch):
    monkeypatch.setattr(screen_http, "SCREEN_DIR", tmp_path)
    application = create_app(Settings(fhir_base_url=None, api_keys=["k1"]))
    auth = {"Authorization": "Bearer k1", "Prefer": "respond-async"}
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "study", "valueString": SECOND_NCT}],
    }
    with TestClient(application) as client:
        resp = client.post(f"/ResearchStudy/{SEED_ID}/$screen", headers=auth, json=body)
        assert resp.status_code == 202, resp.text
        done = _wait(client, resp.headers["Content-Location"], auth)
        assert done.status_code == 200
        links = {o["type"]: o["url"] for o in done.json()["output"]}
        table = client.get(links["worklist"], headers=auth).text
        rows = list(csv.DictReader(table.splitlines()))
        assert {r["study"] for r in rows} == {SEED_ID, SECOND_ID}
        summary = client.get(links["summary"], headers=auth).json()
        assert [s["study"] for s in summary["studies"]] == [SEED_ID, SECOND_ID]
        unknown = {
            "resourceType": "Parameters",
            "parameter": [{"name": "study", "valueString": "NCT9"}],
        }
        bad = client.post(f"/ResearchStudy/{SEED_ID}/$screen", headers=auth, json=unknown)
        assert bad.status_code == 400 and "NCT9" in bad.text
        system = client.post("/$screen", headers=auth, json=body)
        assert system.status_code == 202
        one = _wait(client, system.headers["Content-Location"], auth)
        one_links = {o["type"]: o["url"] for o in one.json()["output"]}
        one_rows = list(
            csv.DictReader(client.get(one_links["worklist"], headers=auth).text.splitlines())
        )
        assert "study" not in one_rows[0] and len(one_rows) == len(rows) // 2  # NCT alone
        store = application.state.result_store
        time.sleep(0.2)  # recording runs on the app's loop as patients finish
        for row in rows:
            stored = client.portal.call(store.latest, row["patient"], row["study"])
            assert stored is not None and stored.status == row["status"], row
            assert stored.source == "screening"


def testcandidate_searches_are_the_union_each_distinct_one_once(tmp_path, two_studies):
    from service.screening.server import candidate_searches

    seed, second = two_studies
    same = candidate_searches([seed, second])
    assert len(same) == 1  # the same ValueSet: one search for both
    other = second_protocol(tmp_path / "other")
    edit_toml(
        other,
        'screening_condition_valueset = "all-any"',
        'screening_condition_valueset = "b-all-diagnosis"',
    )
    edit_toml(other, 'id = "second-trial"', 'id = "third-trial"')
    third = load_protocol(other / "protocol.toml")
    searches = candidate_searches([seed, third, second])
    urls = [url for found in searches.values() for url in found]
    assert len(searches) == 2 and len(urls) == len(set(urls)) == 2
    alone = load_protocol(other / "protocol.toml")
    alone.general.pop("screening_condition_valueset")
    with pytest.raises(InputError, match="screening_condition_valueset"):
        candidate_searches([alone])
