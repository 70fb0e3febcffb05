"""Shared fixtures. Helpers used by several test files live in tests/helpers.py."""

from __future__ import annotations

import pytest

from helpers import tiny_config


@pytest.fixture
def tiny():
    """A fresh `tiny` preset config (3 labels)."""
    return tiny_config()


@pytest.fixture(scope="session")
def task_artifacts(tmp_path_factory):
    """`task_artifacts(task[, kinds])` -> (checkpoint, {graph kind: artifact folder}); see demo_heads.TaskArtifacts."""
    pytest.importorskip("torch")
    from demo_heads import TaskArtifacts

    return TaskArtifacts(tmp_path_factory)
