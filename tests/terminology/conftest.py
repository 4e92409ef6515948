"""Site terminology is process-wide state: every test here starts and ends without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.terminology import runtime


@pytest.fixture(autouse=True)
def _clean_terminology() -> Iterator[None]:
    runtime.reset()
    yield
    runtime.reset()
