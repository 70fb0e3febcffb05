"""`CheckpointError` and the small helpers every part of the checkpoint stage uses for messages."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

Progress = Callable[[str], None] | None


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file, the problem and the fix."""


def say(progress: Progress, message: str) -> None:
    if progress is not None:
        progress(message)


def short(text: object, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def corrupt_message(path: Path | str, exc: BaseException) -> str:
    return (f"{path}: cannot read it as a PyTorch checkpoint ({type(exc).__name__}: {_reason(exc)}); the file is "
            "truncated or corrupt: download or copy it again")


def _reason(exc: BaseException) -> str:
    """The error's own words, without torch's weights-only preamble, which advises loading the file with
    weights_only=False (arbitrary code) -- wrong advice for a corrupt file."""
    text = str(exc)
    if "Weights only load failed" in text:
        text = text.split("WeightsUnpickler error:")[-1].split("Check the documentation of torch.load")[0] \
            if "WeightsUnpickler error:" in text else "not a readable pickle"
    return short(text)
