"""The README is a front page (issue 23, 1): short, every link lands on a page of the manual,
and the five tasks a new user comes for are two clicks away (front page -> manual page)."""

from __future__ import annotations

import re

import pytest

from tests.docs_examples import README, all_examples

ROOT = README.parent
TEXT = README.read_text()
# [label](target): relative targets only; an external URL or an in-page anchor is not a file.
LINK = re.compile(r"\]\((?!https?://|#|<)([^)\s]+)\)")


def _links(text: str) -> list[str]:
    return [target for target in LINK.findall(text)]


def _mkdocs_nav() -> set[str]:
    """The pages named in mkdocs.yml's nav (``- Title: page.md``); no YAML library needed."""
    return set(re.findall(r"^\s*-\s[^\n]*?:\s*\"?([\w/.-]+\.md)\"?\s*$", _NAV, re.MULTILINE))


_NAV = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]


def test_front_page_is_short() -> None:
    assert len(TEXT.splitlines()) <= 150


def test_every_relative_link_lands_on_a_file_and_every_manual_page_is_in_the_site() -> None:
    links = _links(TEXT)
    assert len(links) >= 20
    nav = _mkdocs_nav()
    for target in links:
        path = target.split("#", 1)[0]
        assert (ROOT / path).is_file(), target
        if path.startswith("docs/") and path.endswith(".md"):
            assert path.removeprefix("docs/") in nav, f"{target} is not in mkdocs.yml's nav"


def test_anchors_in_links_exist_on_their_page() -> None:
    for target in _links(TEXT):
        if "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        headings = re.findall(r"^#+\s+(.+)$", (ROOT / path).read_text(), flags=re.MULTILINE)
        slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-") for h in headings}
        assert anchor in slugs, target


@pytest.mark.parametrize(
    ("task", "page", "must_say"),
    [
        ("run the demo", "docs/getting-started.md", ["make demo", "make serve-bg"]),
        ("attest for a patient", "docs/coordinators/app.md", ["Attestation form", "attest"]),
        ("add a trial", "docs/authors/writing-a-trial.md", ["protocol.toml", "protocol check"]),
        ("configure CDS Hooks in an EHR", "docs/integrators/cds-hooks.md", ["CDS_ISSUERS"]),
        ("deploy with Redis", "docs/operators/deployment.md", ["REDIS_URL", "kubectl"]),
    ],
)
def test_each_task_is_two_clicks_from_the_front_page(
    task: str, page: str, must_say: list[str]
) -> None:
    assert page in {t.split("#", 1)[0] for t in _links(TEXT)}, f"{task}: no link to {page}"
    text = (ROOT / page).read_text()
    for words in must_say:
        assert words in text, f"{task}: {page} does not say {words!r}"


def test_the_test_command_and_try_it_steps_are_on_the_front_page_and_run() -> None:
    mine = [e for e in all_examples() if e.page == "README.md"]
    runs = "\n".join(e.code for e in mine if e.mode == "run")
    for step in ("make serve-bg", "$eligibility", "cds-demo", "make stop"):
        assert step in runs, step  # run by tests/test_docs_examples.py against the demo service
    assert "make test " in TEXT and "make test " in (ROOT / ".ci/run").read_text()
    assert "http://127.0.0.1:8000/app/" in TEXT
    for target in ("test-ops", "test-hapi", "test-browser", "test-synthea", "docs", "bench"):
        assert f"`make {target}`" in TEXT or f"`make {target}," in TEXT, target
