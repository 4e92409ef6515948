"""The coordinator's worklist and a patient's studies in a real browser (headless Chromium,
demo mode, two studies, a real screening run). ``pytest -m browser`` (deploy/browser/setup).
Screenshots: test-artifacts/browser/worklist*.png, patient-studies.png."""

from __future__ import annotations

import pytest

from service.api import create_app
from service.settings import Settings
from tests.app.browser import axe_violations, launch_browser, screenshot
from tests.app.smart_sim import serve
from tests.app.worklist_setup import SECOND_ID, SEED_ID, csv_rows, screening_run, two_studies

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = launch_browser(p)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-worklist")
    return screening_run(tmp), two_studies(tmp)


@pytest.fixture
def service(run, tmp_path):
    out, dirs = run
    settings = Settings(
        _env_file=None,
        log_level="WARNING",
        protocol_dirs=dirs,
        app_screening_output_dir=out,
        results_sqlite_path=tmp_path / "results.sqlite3",
    )
    app = create_app(settings)
    with serve(app) as base:
        yield base, app


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield page
    context.close()
    assert errors == [], errors


def _rows(page) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "tr[data-candidate]",
        """rows => rows.map(r => ({patient: r.dataset.candidate, study: r.dataset.study,
            status: r.dataset.candidateStatus}))""",
    )


def test_the_worklist_lists_the_screening_runs_candidates(page, service, run) -> None:
    base, _ = service
    out, _ = run
    page.goto(f"{base}/app/?size=500")
    shown = {(r["patient"], r["study"]): r["status"] for r in _rows(page)}
    expected = csv_rows(out)
    assert expected
    for row in expected:
        assert shown[(row["patient"], SEED_ID)] == row["status"]
    assert {s for _, s in shown} == {SEED_ID, SECOND_ID}  # demo patients for both studies
    screenshot(page, "worklist")


def test_the_filters_narrow_the_worklist(page, service) -> None:
    base, _ = service
    page.goto(f"{base}/app/")
    page.select_option('select[data-filter="study"]', SECOND_ID)
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(f"**study={SECOND_ID}**")
    rows = _rows(page)
    assert rows and {r["study"] for r in rows} == {SECOND_ID}
    page.select_option('select[data-filter="study"]', SEED_ID)
    page.select_option('select[data-filter="status"]', "potential-candidate")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**status=potential-candidate**")
    rows = _rows(page)
    assert rows and {(r["study"], r["status"]) for r in rows} == {(SEED_ID, "potential-candidate")}
    page.click('a[data-sort="patient"]')
    page.wait_for_url("**sort=patient**")
    patients = [r["patient"] for r in _rows(page)]
    assert patients == sorted(patients)
    screenshot(page, "worklist-filtered")
    page.emulate_media(media="print")
    assert not page.is_visible('form[data-form="worklist-filter"]')
    assert page.is_visible("table.worklist")
    screenshot(page, "worklist-print")


def test_a_patients_page_shows_every_study(page, service) -> None:
    base, _ = service
    page.goto(f"{base}/app/?size=500&study={SECOND_ID}")
    page.locator('tr[data-candidate="demo-potential"] td a').first.click()
    page.wait_for_url(f"{base}/app/patients/demo-potential/studies")
    studies = page.eval_on_selector_all("section[data-study]", "s => s.map(e => e.dataset.study)")
    assert studies == [SEED_ID, SECOND_ID]
    screenshot(page, "patient-studies")


def _study_status(page, study: str) -> str:
    return page.get_attribute(
        f'section[data-study="{study}"] [data-study-status]', "data-study-status"
    )


def test_attesting_for_one_study_changes_only_that_studys_row(page, service) -> None:
    base, app = service
    page.goto(f"{base}/app/patients/demo-potential/studies")
    assert _study_status(page, SEED_ID) == _study_status(page, SECOND_ID) == "potential-candidate"
    page.click(f'section[data-study="{SECOND_ID}"] a[data-action="attest"]')
    page.wait_for_url(f"**/attest?study={SECOND_ID}")
    for link_id in ("I5", "I9", "I11", "I12"):
        page.check(f'form[data-form="attestation"] input[name="{link_id}"][value="true"]')
    page.get_by_role("button", name="Sign and submit attestation").click()
    page.wait_for_url(f"{base}/app/patients/demo-potential?study={SECOND_ID}")
    assert page.get_attribute("[data-status]", "data-study") == SECOND_ID
    assert page.get_attribute("[data-status]", "data-status") == "eligible"
    page.click('a[data-action="all-studies"]')
    page.wait_for_url(f"{base}/app/patients/demo-potential/studies")
    assert _study_status(page, SECOND_ID) == "eligible"
    assert _study_status(page, SEED_ID) == "potential-candidate"
    page.goto(f"{base}/app/?size=500")
    rows = {(r["patient"], r["study"]): r["status"] for r in _rows(page)}
    assert rows[("demo-potential", SECOND_ID)] == "eligible"
    assert rows[("demo-potential", SEED_ID)] == "potential-candidate"
    changed = page.locator(f'tr[data-candidate="demo-potential"][data-study="{SECOND_ID}"]')
    assert changed.get_attribute("data-changed") is not None
    assert "potential-candidate -> eligible" in changed.inner_text()
    assert len(app.state.web_app.demo.written("QuestionnaireResponse")) == 1


def test_no_serious_accessibility_violations(browser, service) -> None:
    base, _ = service
    context = browser.new_context(bypass_csp=True)  # axe is injected as an inline script
    page = context.new_page()
    try:
        for path in (
            "/app/",
            f"/app/?study={SECOND_ID}&status=potential-candidate&sort=open",
            "/app/patients/demo-potential/studies",
            f"/app/patients/demo-potential?study={SECOND_ID}",
            f"/app/patients/demo-potential/attest?study={SECOND_ID}",
        ):
            page.goto(base + path)
            assert axe_violations(page) == [], path
    finally:
        context.close()
