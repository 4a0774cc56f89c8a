"""Fixtures shared by the root tests (the session guards are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fault_lab import lone_namespace


@pytest.fixture
def namespace(lab_name: str) -> Iterator[str]:
    """One bare network namespace of this session's, removed after the test."""
    with lone_namespace(lab_name) as name:
        yield name
