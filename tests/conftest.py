"""Fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.fhir.demo_layer import shared_demo_layer


@pytest.fixture(autouse=True)
def _clean_demo_layer() -> Iterator[None]:
    """Demo mode keeps what the web app writes for the life of the process; every test starts
    from the demo patients as shipped."""
    shared_demo_layer().reset()
    yield
    shared_demo_layer().reset()
