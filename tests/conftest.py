"""Shared fixtures. Helpers used by several test files live in tests/helpers.py."""

from __future__ import annotations

import pytest

from helpers import tiny_config


@pytest.fixture
def tiny():
    """A fresh `tiny` preset config (3 labels)."""
    return tiny_config()
