"""The parity harness: an artifact against the PyTorch reference of its checkpoint.

`compare_checkpoint` (`mbert-export compare --checkpoint`) runs reference and artifact on held-out
sentences and random shapes, judged per precision. The judging is runtime.verify's
`compare_outputs`, not Polygraphy's comparator: Polygraphy checks element-wise abs/rel tolerances
and top-k indices per output, but the precision bars need agreement counted only at real tokens (or
masked positions), padded vocabulary rows excluded, and counts pooled across input sets; and the
deployed runtime must judge without Polygraphy installed. The reference vectors stored with every
artifact are `mbert_export.reference`'s (re-exported here).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .reference import (DEFAULT_TEXTS, REFERENCE_FILE, reference_feeds, reference_outputs,  # noqa: F401 (re-exported)
                        write_reference_vectors)
from .tasks import Task, sample_inputs

__all__ = ["compare_checkpoint", "parity_inputs", "parity_markdown", "write_reference_vectors", "reference_feeds",
           "DEFAULT_TEXTS", "REFERENCE_FILE", "POOLED_TEXT"]


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
                       progress=None, inference_precision: str | None = None,
                       reference_cache: dict | None = None) -> dict:
    """Run the PyTorch reference of `checkpoint` and the artifact on the same inputs; judge the artifact.

    Per input set and output: max/mean abs error, top-1 agreement, cosine similarity, NaN/inf counts,
    judged against the thresholds of the artifact's precision (runtime.verify's), except top-1: it is
    judged once, pooled over all held-out text (the precision bars are defined on real text; random
    token ids give near-tied logits, so their top-1 is reported only). Writes `report` as JSON and a
    markdown table beside it (`.md`) when given. Returns the report dict (`passed` inside).
    backend: "onnxruntime", "openvino" (at `inference_precision`, "f32" or "bf16") or "tensorrt".
    reference_cache: a dict kept by the caller to share the reference model and its outputs between
    calls on the same checkpoint (several artifacts of one checkpoint: the parity suite), keyed by
    checkpoint, task and the input bytes; the caller decides when to drop it.
    """
    from .export import load_model_for_task
    from .fileio import write_report
    from .runtime import OrtMegatronBert, OvMegatronBert, TRTMegatronBert
    from .runtime.verify import compare_outputs, pooled_top1, thresholds_for

    say = progress or (lambda message: None)
    if inference_precision is not None and backend != "openvino":
        raise ValueError("inference_precision applies to the openvino backend only")
    if backend == "tensorrt":
        runtime = TRTMegatronBert(artifact)
    elif backend == "openvino":
        runtime = OvMegatronBert(artifact, inference_precision=inference_precision)
    else:
        runtime = OrtMegatronBert(artifact)
    try:
        task, precision = runtime.task, runtime.precision
        cache = {} if reference_cache is None else reference_cache
        model_key = ("model", str(checkpoint), task.name)
        if model_key not in cache:
            cache[model_key] = load_model_for_task(checkpoint, task, allow_random_head=True, progress=say)
        model = cache[model_key]
        if getattr(model, "random_head", None):
            raise ValueError(f"{checkpoint} has no weights for the {task.name} head ({', '.join(model.random_head)}): "
                             "its PyTorch reference would draw new random weights, unlike the artifact's, so the "
                             "comparison would mean nothing; compare against the checkpoint the head was trained in, "
                             "or check the artifact on its own reference vectors: mbert-export verify ARTIFACT")
        thresholds = thresholds_for(precision)
        sets = parity_inputs(task, model.config, runtime.tokenizer, samples, runtime.max_batch,
                             runtime.max_seq_len)
        rows, text_checks = [], []
        for name, (feeds, is_text) in sets.items():
            say(f"compare: {name}")
            key = (str(checkpoint), task.name, _digest(feeds))
            if key not in cache:
                cache[key] = reference_outputs(model, task, feeds)
            expected = cache[key]
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
              "backend": backend, "runs_on": runtime.backend.describe(), "thresholds": thresholds.__dict__,
              "passed": all(not r["failures"] for r in rows), "rows": rows}
    if report:
        write_report(report, result, parity_markdown(result))
    return result


def _digest(feeds: dict[str, np.ndarray]) -> str:
    """Identity of a set of inputs (names, shapes, bytes), for the reference cache."""
    digest = hashlib.sha1()
    for name in sorted(feeds):
        value = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


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
