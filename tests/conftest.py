"""Fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.fhir.demo_layer import shared_demo_layer


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
