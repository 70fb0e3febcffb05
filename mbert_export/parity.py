"""Reference vectors: a few real inputs and the PyTorch reference outputs, stored with the artifact.

`write_reference_vectors(model, task, folder)` runs the reference model (this module imports torch)
and writes `folder/reference.npz`. Wherever the artifact is deployed, the torch-free runtime checks
itself against it: `OrtMegatronBert(folder).verify()` / `TRTMegatronBert(folder).verify()` (see
`mbert_export.runtime.verify` for the file layout and the per-precision thresholds).

`compare_checkpoint` (`mbert-export compare --checkpoint`) is the parity harness: reference and
artifact on held-out sentences and random shapes, judged per precision. The judging is
runtime.verify's `compare_outputs`, not Polygraphy's comparator: Polygraphy checks element-wise
abs/rel tolerances and top-k indices per output, but the precision bars need agreement counted
only at real tokens (or masked positions), padded vocabulary rows excluded, and counts pooled
across input sets; and the deployed runtime must judge without Polygraphy installed.
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

__all__ = ["write_reference_vectors", "reference_feeds", "DEFAULT_TEXTS", "REFERENCE_FILE"]

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


def _load_tokenizer(tokenizer: Any, folder: Path):
    from .tokenization import Tokenizer

    if tokenizer is None:
        if any((folder / name).is_file() for name in TOKENIZER_MAIN_FILES):
            return Tokenizer.from_pretrained(folder)
        return None
    if isinstance(tokenizer, (str, os.PathLike)):
        return Tokenizer.from_pretrained(tokenizer)
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
    tok = _load_tokenizer(tokenizer, folder)
    if tok is not None and tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model only {model.config.vocab_size} "
                         "embedding rows; pass the model's own tokenizer")
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


# ---------------------------------------------------------------------------- checkpoint vs artifact
def parity_inputs(task: Task, config, tokenizer, samples: int, max_batch: int, max_seq: int,
                  seed: int = 0) -> dict[str, tuple[dict[str, np.ndarray], bool]]:
    """Named input sets -> (feeds, is_text): real held-out sentences (tokenized; [MASK]ed for MLM
    tasks), and random (batch, sequence) shapes across the artifact's range, including its maximum."""
    from .calibration import load_passages

    sets: dict[str, tuple[dict[str, np.ndarray], bool]] = {}
    if tokenizer is not None:
        passages = [p for p in load_passages("heldout") if p.strip()][:samples]
        for start in range(0, len(passages), max(1, max_batch)):
            chunk = passages[start:start + max_batch]
            sets[f"held-out text {start + 1}-{start + len(chunk)}"] = (
                reference_feeds(task, config, tokenizer, chunk, max_seq)[0], True)
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (max_batch, max_seq)] + [
        (int(rng.integers(1, max_batch + 1)), int(rng.integers(2, max_seq + 1))) for _ in range(2)]
    for i, (batch, seq) in enumerate(shapes):
        sets[f"random batch {batch} x seq {seq}"] = (sample_inputs(config, task, batch, seq, seed=seed + i), False)
    return sets


#: Row label of the pooled top-1 verdict in parity reports.
POOLED_TEXT = "all held-out text (pooled)"


def compare_checkpoint(checkpoint: str | os.PathLike, artifact: str | os.PathLike, *, samples: int = 32,
                       backend: str = "onnxruntime", report: str | os.PathLike | None = None,
                       progress=None) -> dict:
    """Run the PyTorch reference of `checkpoint` and the artifact on the same inputs; judge the artifact.

    Per input set and output: max/mean abs error, top-1 agreement, cosine similarity, NaN/inf counts,
    judged against the thresholds of the artifact's precision (runtime.verify's), except top-1: it is
    judged once, pooled over all held-out text (the precision bars are defined on real text; random
    token ids give near-tied logits, so their top-1 is reported only). Writes `report` as JSON and a
    markdown table beside it (`.md`) when given. Returns the report dict (`passed` inside).
    """
    from .export import load_model_for_task, reference_outputs
    from .fileio import atomic_write_text
    from .runtime import OrtMegatronBert, TRTMegatronBert
    from .runtime.verify import compare_outputs, pooled_top1, thresholds_for

    say = progress or (lambda message: None)
    runtime = TRTMegatronBert(artifact) if backend == "tensorrt" else OrtMegatronBert(artifact)
    try:
        task, precision = runtime.task, runtime.precision
        model = load_model_for_task(checkpoint, task, allow_random_head=True, progress=say)
        thresholds = thresholds_for(precision)
        sets = parity_inputs(task, model.config, runtime.tokenizer, samples, runtime.max_batch,
                             runtime.max_seq_len)
        rows, text_checks = [], []
        for name, (feeds, is_text) in sets.items():
            say(f"compare: {name}")
            expected = reference_outputs(model, task, feeds)
            got = runtime.run(feeds)
            checks = compare_outputs(task, feeds, expected, got, thresholds, model.config.real_vocab_size,
                                     judge_top1=False)
            if is_text:
                text_checks += checks
            rows += [_row(name, check) for check in checks]
        rows += [_row(POOLED_TEXT, check) for check in pooled_top1(text_checks, thresholds).values()]
    finally:
        runtime.close()
    result = {"checkpoint": str(checkpoint), "artifact": str(artifact), "task": task.name, "precision": precision,
              "backend": backend, "thresholds": thresholds.__dict__, "passed": all(not r["failures"] for r in rows),
              "rows": rows}
    if report:
        report = Path(report)
        atomic_write_text(report, json.dumps(result, indent=1, default=float) + "\n")
        atomic_write_text(report.with_suffix(".md"), parity_markdown(result))
    return result


def _row(inputs: str, check) -> dict:
    return {"inputs": inputs, "output": check.name, "max_abs": check.max_abs, "mean_abs": check.mean_abs,
            "top1": check.top1, "top1_count": check.top1_count, "top5": check.top5, "cosine": check.cosine,
            "nan": check.nan, "inf": check.inf, "failures": check.failures}


def parity_markdown(result: dict) -> str:
    """The report as a markdown table."""
    lines = [f"Parity of `{result['artifact']}` ({result['task']}, {result['precision']}, {result['backend']}) "
             f"against the PyTorch reference of `{result['checkpoint']}`: "
             f"**{'PASSED' if result['passed'] else 'FAILED'}**", "",
             "| inputs | output | max abs | mean abs | top-1 | top-5 overlap | cosine | NaN/inf | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        top1 = f"{r['top1']:.2%}" if r["top1"] is not None else "-"
        cosine = f"{r['cosine']:.6f}" if r["cosine"] is not None else "-"
        if r["top1_count"] and r["inputs"] == POOLED_TEXT:
            top1 += " ({}/{})".format(*r["top1_count"])
        verdict = "ok" if not r["failures"] else "; ".join(r["failures"])
        top5 = f"{r['top5']:.2%}" if r.get("top5") is not None else "-"
        lines.append(f"| {r['inputs']} | {r['output']} | {r['max_abs']:.2e} | {r['mean_abs']:.2e} | {top1} | "
                     f"{top5} | {cosine} | {r['nan']}/{r['inf']} | {verdict} |")
    return "\n".join(lines) + "\n"
