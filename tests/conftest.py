"""Shared fixtures. Helpers used by several test files live in tests/helpers.py."""

from __future__ import annotations

import os

import pytest

from helpers import tiny_config


@pytest.fixture
def tiny():
    """A fresh `tiny` preset config (3 labels)."""
    return tiny_config()


@pytest.fixture(scope="session")
def task_artifacts(tmp_path_factory):
    """`task_artifacts(task[, kinds])` -> (checkpoint, {graph kind: artifact folder}); see demo_heads.TaskArtifacts.

    Under pytest-xdist every worker uses the run's shared temp folder, so each artifact is made once."""
    pytest.importorskip("torch")
    from demo_heads import TaskArtifacts

    base = tmp_path_factory.getbasetemp()
    return TaskArtifacts((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "task-artifacts")


# ---------------------------------------------------------------------------- pytest-xdist
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Hand tests to the workers by module (module fixtures are built once), except the parity suite,
    whose rows are handed out task by task (its nine tasks are the biggest units of the run)."""
    from xdist.scheduler import LoadScopeScheduling

    from mbert_export.tasks import TASKS

    by_length = sorted(TASKS, key=len, reverse=True)

    class ByModuleAndParityTask(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module, _, test = nodeid.partition("::")
            if module.endswith("test_parity_suite.py") and "[" in test:
                params = test.split("[", 1)[1]
                task = next((t for t in by_length if params.startswith(t + "-")), "")
                return f"{module}::{task}"
            return module

    return ByModuleAndParityTask(config, log)
