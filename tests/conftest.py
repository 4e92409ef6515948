"""Fixtures for the whole suite."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

import fhir_mappings
from service import portfolio
from service.fhir.demo_layer import shared_demo_layer

# The result store's default SQLite file is shared by every run on a machine: give this run
# its own, so answers recorded by another run (or a developer's server) never leak into a test.
if "ELIGIBILITY_RESULTS_SQLITE_PATH" not in os.environ:
    _RESULTS_DIR = tempfile.mkdtemp(prefix="eligibility-test-results-")
    atexit.register(shutil.rmtree, _RESULTS_DIR, ignore_errors=True)
    os.environ["ELIGIBILITY_RESULTS_SQLITE_PATH"] = os.path.join(_RESULTS_DIR, "results.sqlite")


SEED_PROTOCOL = fhir_mappings.DEFAULT_PROTOCOL


REAL_PROTOCOL_FILES = portfolio.protocol_files


def _seed_alone(base=fhir_mappings.MAPPINGS_DIR):
    """The default folder list as the suite sees it: the seed alone (see below)."""
    found = REAL_PROTOCOL_FILES(base)
    if base == fhir_mappings.MAPPINGS_DIR:
        return [f for f in found if f == SEED_PROTOCOL]
    return found


@pytest.fixture(scope="session", autouse=True)
def _seed_alone_by_default() -> Iterator[None]:
    """The product loads every folder under fhir_mappings/ by default (the seed, ZUMA-3 and
    DAPA-CKD). Most tests were written for the seed alone and prove its exact outputs, so in
    this suite the default folder list is the seed alone (session-wide, so module fixtures
    that build an app see it too); protocols a test names (ELIGIBILITY_PROTOCOL_DIRS,
    Settings.protocol_dirs or protocol_path, load_portfolio(paths)) load as always. Tests of
    the real default use the ``every_protocol`` fixture."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(portfolio, "protocol_files", _seed_alone)
        yield


@pytest.fixture
def every_protocol(monkeypatch) -> None:
    """The product's real default for this test: every protocol folder under fhir_mappings/."""
    monkeypatch.setattr(portfolio, "protocol_files", REAL_PROTOCOL_FILES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that stops the shared HAPI server runs after every other test (stable sort)."""
    items.sort(key=lambda item: item.get_closest_marker("stops_hapi") is not None)


@pytest.fixture(autouse=True)
def _clean_demo_layer() -> Iterator[None]:
    """Demo mode keeps what the web app writes for the life of the process; every test starts
    from the demo patients as shipped."""
    shared_demo_layer().reset()
    yield
    shared_demo_layer().reset()
