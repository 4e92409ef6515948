"""Every shell and HTTP example of the manual runs against the demo service (issue 23, 2).

The blocks are extracted from ``docs/`` (``tests/docs_examples.py``); blocks of one page run
in order in one scratch folder, so a page may build on its earlier blocks. HAPI-marked blocks
run in the HAPI suite (``tests/integration/test_docs_examples_hapi.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs_examples import (
    Example,
    all_examples,
    demo_service,
    extract,
    run_shell,
    scratch_folder,
    send_http,
    substitute,
)

EXAMPLES = all_examples()
RUN = [e for e in EXAMPLES if e.mode == "run"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = scratch_folder(tmp_path_factory.mktemp("docs-service"))
    with demo_service(folder) as origin:
        yield origin


@pytest.fixture(scope="module")
def page_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {}


def _folder(folders: dict[str, Path], page: str, factory: pytest.TempPathFactory) -> Path:
    if page not in folders:
        folders[page] = scratch_folder(factory.mktemp("docs-page"))
    return folders[page]


@pytest.mark.parametrize("example", RUN, ids=[e.id for e in RUN])
def test_example_runs(
    example: Example,
    service: str,
    page_folders: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    code = substitute(example.code, service)
    if example.lang == "http":
        response = send_http(code, service)
        if example.expect is not None:
            assert response.status_code == example.expect, response.text[:500]
        else:
            assert response.is_success, f"{response.status_code}: {response.text[:500]}"
        return
    done = run_shell(code, _folder(page_folders, example.page, tmp_path_factory))
    assert done.returncode == 0, (
        f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )


def test_the_manual_has_runnable_examples_and_few_illustrative_ones() -> None:
    kinds = {lang: [e for e in RUN if e.lang == lang] for lang in ("bash", "http")}
    assert len(kinds["bash"]) >= 5 and len(kinds["http"]) >= 3
    not_run = [e for e in EXAMPLES if e.mode == "not-run"]
    assert len(not_run) <= len(RUN) // 2, [e.id for e in not_run]  # "use sparingly"
    assert any(e.mode == "hapi" for e in EXAMPLES)


def test_extractor_reads_markers_and_skips_other_languages() -> None:
    text = "\n".join(
        [
            "```bash", "echo one", "```",
            "<!-- not-run: a cluster -->", "```bash", "kubectl apply", "```",
            "<!-- needs: hapi -->", "```bash", "eligibility load-demo", "```",
            "<!-- expect: 401 -->", "```http", "GET /cds-services HTTP/1.1", "```",
            "```json", "{}", "```",
        ]
    )  # fmt: skip
    found = extract(text, "page.md")
    assert [(e.lang, e.mode, e.expect, e.code) for e in found] == [
        ("bash", "run", None, "echo one"),
        ("bash", "not-run", None, "kubectl apply"),
        ("bash", "hapi", None, "eligibility load-demo"),
        ("http", "run", 401, "GET /cds-services HTTP/1.1"),
    ]
    with pytest.raises(ValueError, match="unknown need"):
        extract("<!-- needs: redis -->\n```bash\ntrue\n```", "p.md")


def test_a_failing_example_fails(tmp_path: Path) -> None:
    """The runner reports a failing command (so a wrong example cannot pass)."""
    folder = scratch_folder(tmp_path)
    assert run_shell(".venv/bin/eligibility protocol check no-such-folder", folder).returncode != 0
    assert run_shell("make test", folder).returncode != 0  # only serve-bg/stop are played
