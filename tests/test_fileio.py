"""Atomic writes: outputs appear whole or not at all, with the permissions a plain write would give."""

from __future__ import annotations

import os
import stat

import pytest

from mbert_export.fileio import atomic_dir, atomic_write_text


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_get_the_modes_of_a_plain_write(tmp_path, umask, file_mode, dir_mode):
    """Temp files are made private (mkstemp 0600, mkdtemp 0700); once renamed into place they must be
    readable as a plain open/mkdir would make them, e.g. by a Triton container running as another user."""
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
        with atomic_dir(tmp_path / "artifact") as stage:
            atomic_write_text(stage / "vocab.txt", "[PAD]\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "artifact").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "artifact" / "vocab.txt").stat().st_mode) == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "report.json"]  # no temp left
