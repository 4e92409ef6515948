"""The manual's examples marked ``<!-- needs: hapi -->``, against the local HAPI FHIR server
(``deploy/hapi/run-tests`` sets HAPI_BASE_URL), with the demo service for the others' sake."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs_examples import (
    all_examples,
    demo_service,
    run_shell,
    scratch_folder,
    substitute,
)

HAPI = os.environ.get("HAPI_BASE_URL")
NEEDS_HAPI = [e for e in all_examples() if e.mode == "hapi"]
pytestmark = [
    pytest.mark.hapi,
    pytest.mark.skipif(not HAPI, reason="HAPI_BASE_URL not set (deploy/hapi/run-tests sets it)"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    where = scratch_folder(tmp_path_factory.mktemp("docs-hapi"))
    with demo_service(where) as origin:
        yield where, origin


@pytest.mark.parametrize("example", NEEDS_HAPI, ids=[e.id for e in NEEDS_HAPI])
def test_hapi_example_runs(example, folder: tuple[Path, str]) -> None:
    where, origin = folder
    done = run_shell(substitute(example.code, origin, HAPI), where, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
