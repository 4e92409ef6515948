"""Fixtures for the whole suite."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from service.fhir.demo_layer import shared_demo_layer

# The result store's default SQLite file is shared by every run on a machine: give this run
# its own, so answers recorded by another run (or a developer's server) never leak into a test.
os.environ.setdefault(
    "ELIGIBILITY_RESULTS_SQLITE_PATH",
    os.path.join(tempfile.mkdtemp(prefix="eligibility-test-results-"), "results.sqlite"),
)


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
