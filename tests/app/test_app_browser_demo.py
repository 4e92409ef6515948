"""The web app in a real browser (headless Chromium), demo mode, as a new user meets it.

``pytest -m browser`` (needs deploy/browser/setup). Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import pytest

from service.api import create_app
from service.settings import Settings
from tests.app.browser import axe_violations, launch_browser, screenshot
from tests.app.smart_sim import serve

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = launch_browser(p)
        yield browser
        browser.close()


@pytest.fixture
def service():
    """The service in demo mode on a loopback port; yields (base URL, app)."""
    app = create_app(Settings(_env_file=None, log_level="WARNING"))
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
    assert errors == [], errors  # e.g. a CSP violation or a broken script


def _written(app) -> list[dict]:
    return app.state.web_app.demo.written("QuestionnaireResponse")


def _open_potential_candidate(page, base: str) -> None:
    page.goto(f"{base}/app/")
    page.locator('tr[data-patient="demo-potential"] a').click()
    page.wait_for_url(f"{base}/app/patients/demo-potential")
    assert page.get_attribute("[data-status]", "data-status") == "potential-candidate"


def _answer(page, answers: dict[str, str]) -> None:
    for link_id, value in answers.items():
        page.check(f'form[data-form="attestation"] input[name="{link_id}"][value="{value}"]')


def test_attesting_yes_to_every_open_item_makes_the_candidate_eligible(page, service) -> None:
    base, app = service
    _open_potential_candidate(page, base)
    screenshot(page, "review-potential-candidate")
    page.get_by_role("link", name="Record investigator attestation").click()
    page.wait_for_url(f"{base}/app/patients/demo-potential/attest")
    required = page.locator('input[value="true"][required]')
    open_items = [required.nth(i).get_attribute("name") for i in range(required.count())]
    assert open_items == ["I5", "I9", "I11", "I12"]
    _answer(page, dict.fromkeys(open_items, "true"))
    screenshot(page, "attestation-form")
    page.get_by_role("button", name="Sign and submit attestation").click()
    page.wait_for_url(f"{base}/app/patients/demo-potential")
    assert page.get_attribute("[data-status]", "data-status") == "eligible"
    for code in open_items:
        assert page.get_attribute(f'tr[data-criterion="{code}"]', "data-result") == "met"
    assert "Attestation saved" in page.inner_text(".flash")
    page.emulate_media(media="print")
    assert not page.is_visible("header.top") and not page.is_visible("[data-action=print]")
    assert page.is_visible("[data-status]") and page.is_visible('tr[data-criterion="I12"]')
    page.emulate_media(media="screen")
    screenshot(page, "review-eligible")
    screenshot(page, "review-eligible-top", full_page=False)  # docs/app-review.png
    assert len(_written(app)) == 1


def test_a_no_gives_not_met_and_names_the_attestor(page, service) -> None:
    base, _ = service
    page.goto(f"{base}/app/patients/demo-potential/attest")
    _answer(page, {"I5": "true", "I9": "false", "I11": "true", "I12": "true"})
    page.fill('textarea[name="comment.I9"]', "Rapid progression this week")
    page.get_by_role("button", name="Sign and submit attestation").click()
    page.wait_for_url(f"{base}/app/patients/demo-potential")
    assert page.get_attribute("[data-status]", "data-status") == "ineligible"
    row = page.locator('tr[data-criterion="I9"]')
    assert row.get_attribute("data-result") == "not-met"
    assert "Demo Investigator" in row.inner_text()
    record = page.locator("table.attestations").inner_text()
    assert "I9: No" in record and "Rapid progression this week" in record


def test_a_double_click_on_submit_creates_one_response(page, service) -> None:
    base, app = service
    page.goto(f"{base}/app/patients/demo-potential/attest")
    _answer(page, {"I5": "true", "I9": "true", "I11": "true", "I12": "true"})
    page.get_by_role("button", name="Sign and submit attestation").dblclick()
    page.wait_for_url(f"{base}/app/patients/demo-potential")
    page.wait_for_load_state("networkidle")
    assert page.get_attribute("[data-status]", "data-status") == "eligible"
    assert len(_written(app)) == 1


def test_missing_answers_are_stopped_in_the_browser_and_nothing_is_written(page, service) -> None:
    base, app = service
    page.goto(f"{base}/app/patients/demo-potential/attest")
    _answer(page, {"I5": "true"})
    page.get_by_role("button", name="Sign and submit attestation").click()
    page.wait_for_timeout(300)
    assert page.url == f"{base}/app/patients/demo-potential/attest"  # the browser refused
    assert _written(app) == []


def test_no_serious_accessibility_violations(browser, service) -> None:
    base, _ = service
    # axe is injected as an inline script, which our CSP rightly forbids: bypass it for axe only
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    try:
        for path in (
            "/app/",
            "/app/patients/demo-potential",
            "/app/patients/demo-potential/attest",
            "/app/patients/demo-ineligible",
        ):
            page.goto(base + path)
            assert axe_violations(page) == [], path
    finally:
        context.close()


def test_the_csp_blocks_an_injected_inline_script(browser, service) -> None:
    base, _ = service
    context = browser.new_context()
    page = context.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text))
    try:
        page.goto(f"{base}/app/patients/demo-potential")
        ran = page.evaluate(
            """() => { window.__ran = false; const s = document.createElement('script');
            s.textContent = 'window.__ran = true'; document.body.appendChild(s);
            return window.__ran; }"""
        )
        assert ran is False
        assert any("Content Security Policy" in m for m in messages)
    finally:
        context.close()
