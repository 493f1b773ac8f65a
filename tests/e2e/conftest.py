from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import ServiceProcess


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    """Service processes a test started; killed at the end whatever happened."""
    started: list[ServiceProcess] = []
    yield started
    for p in started:
        p.stop()
