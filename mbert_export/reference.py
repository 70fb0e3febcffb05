"""Reference vectors: a few real inputs and the PyTorch reference outputs, stored with the artifact.

`write_reference_vectors(model, task, folder)` runs the reference model (this module imports torch)
and writes `folder/reference.npz`. Wherever the artifact is deployed, the torch-free runtime checks
itself against it: `OrtMegatronBert(folder).verify()` / `TRTMegatronBert(folder).verify()` (see
`mbert_export.runtime.verify` for the file layout and the per-precision thresholds).

Data flow: modeling -> reference -> export (writes the vectors beside each graph) -> parity (the
harness, which loads models through export and inputs through this module). Nothing here imports
export or parity.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .fileio import atomic_path
from .runtime.artifact import REFERENCE_FILE, TOKENIZER_MAIN_FILES
from .runtime.verify import INPUT_PREFIX, META_KEY, OUTPUT_PREFIX
from .tasks import NUM_CHOICES, TEXT_INPUTS, Task, get_task, sample_inputs

__all__ = ["write_reference_vectors", "reference_feeds", "reference_outputs", "DEFAULT_TEXTS", "REFERENCE_FILE"]

#: Varied English sentences of different lengths (so batches hold padded rows).
DEFAULT_TEXTS = (
    "The capital of France is Paris, a city on the Seine.",
    "Megatron-LM trains very large transformer language models.",
    "She bought three apples and two pears at the market yesterday.",
    "How many moons does Jupiter have?",
    "The quick brown fox jumps over the lazy dog.",
    "TensorRT builds optimized inference engines for NVIDIA GPUs.",
    "Yes, it is.",
)
#: Tasks whose inputs are text pairs.
PAIR_TASKS = ("nsp", "pretraining", "question-answering")
MASK_TASKS = ("mlm", "pretraining")
#: Longest reference sequence (keeps the file small and inside every engine profile worth building).
DEFAULT_MAX_SEQ_LEN = 128


def _mask_words(text: str, mask: str, every: int = 4) -> str:
    """Replace every `every`-th word by the mask token (at least one)."""
    words = text.split()
    for i in range(1, len(words), every):
        words[i] = mask
    return " ".join(words)


def model_tokenizer(tokenizer: Any, config, folder: Path | None = None):
    """`tokenizer` (a Tokenizer, or a folder to load it from; None: the one in `folder`, if any),
    refused when it has more tokens than the model has embedding rows."""
    from .tokenization import Tokenizer

    if tokenizer is None and folder is not None and any((folder / n).is_file() for n in TOKENIZER_MAIN_FILES):
        tokenizer = folder
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = Tokenizer.from_pretrained(tokenizer)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size} "
                         "embedding rows; pass the model's own tokenizer")
    return tokenizer


def reference_feeds(task: Task, config, tokenizer=None, texts: Sequence[str] | None = None,
                    max_seq_len: int | None = None, seed: int = 0) -> tuple[dict[str, np.ndarray], list[Any]]:
    """(int64 model inputs, the texts they came from) for `task`: tokenized texts, else random ids."""
    limit = min(config.max_position_embeddings, max_seq_len or DEFAULT_MAX_SEQ_LEN)
    if tokenizer is not None:
        limit = min(limit, tokenizer.model_max_length)
        texts = list(texts or DEFAULT_TEXTS)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("texts must be a non-empty list of non-empty strings")
        if task.name in MASK_TASKS:
            texts = [t if tokenizer.mask_token in t else _mask_words(t, tokenizer.mask_token) for t in texts]
        if NUM_CHOICES in task.input_axes.values():
            prompts = texts[: max(1, len(texts) // 2)]
            pool = texts[len(prompts):] or texts
            n = 3 if len(pool) >= 3 else 2
            choices = [[pool[(i + j) % len(pool)] for j in range(n)] for i in range(len(prompts))]
            flat = tokenizer([p for p in prompts for _ in range(n)], [c for cs in choices for c in cs],
                             max_length=limit, truncation=True)
            feeds = {k: flat[k].reshape(len(prompts), n, -1) for k in TEXT_INPUTS}
            return feeds, [[p, list(cs)] for p, cs in zip(prompts, choices)]
        if task.name in PAIR_TASKS:
            firsts, seconds = texts, texts[1:] + texts[:1]
            if task.name == "question-answering":
                firsts = ["What is this sentence about?"] * len(texts)
                seconds = texts
            batch = tokenizer(firsts, seconds, max_length=limit, truncation=True)
            return {k: batch[k] for k in TEXT_INPUTS}, [[a, b] for a, b in zip(firsts, seconds)]
        batch = tokenizer(texts, max_length=limit, truncation=True)
        return {k: batch[k] for k in TEXT_INPUTS}, list(texts)

    # No tokenizer: random ids from the real vocabulary, rows right-padded to different lengths.
    return sample_inputs(config, task, 4, min(16, limit), seed=seed, num_choices=3), []


def write_reference_vectors(model, task: str | Task, folder: str | os.PathLike, tokenizer: Any = None,
                            texts: Sequence[str] | None = None, max_seq_len: int | None = None) -> Path:
    """Run the PyTorch reference `model` on a few inputs and write `folder/reference.npz` (atomically).

    Inputs are `texts` (default: `DEFAULT_TEXTS`, with [MASK] tokens for masked-LM tasks and pairs for
    pair tasks) tokenized with `tokenizer` (a Tokenizer or a folder; default: the tokenizer files in
    `folder`), or random ids when there is no tokenizer. Returns the file's path.
    """
    import torch

    task = get_task(task) if isinstance(task, str) else task
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = model_tokenizer(tokenizer, model.config, folder)
    feeds, used_texts = reference_feeds(task, model.config, tok, texts, max_seq_len)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    finally:
        model.train(was_training)
    arrays = {INPUT_PREFIX + k: np.ascontiguousarray(v, dtype=np.int64) for k, v in feeds.items()}
    for name in task.output_names:
        arrays[OUTPUT_PREFIX + name] = out[name].detach().float().cpu().numpy()
    meta = {"task": task.name, "model_class": type(model).__name__, "texts": used_texts,
            "tokenized": tok is not None, "mbert_export_version": __version__, "torch_version": torch.__version__}
    arrays[META_KEY] = np.array(json.dumps(meta))
    target = folder / REFERENCE_FILE
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return target


def reference_outputs(model, task: Task, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference model's outputs of `task` on int64 `feeds`, as float32 numpy arrays."""
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return {name: out[name].float().numpy() for name in task.output_names}
