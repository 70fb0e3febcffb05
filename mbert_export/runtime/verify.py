"""Self-check of a deployed artifact against reference vectors (torch-free).

`reference.npz` (written at export/build time by `mbert_export.reference.write_reference_vectors`)
holds a few real model inputs and the PyTorch reference outputs for them. `compare_outputs` measures
how far a runtime's outputs are from them (max / mean absolute error, NaN and inf counts, top-1
agreement and cosine similarity) and judges them against per-precision thresholds. The same
comparison serves `compare` (two runtimes on the same inputs), the parity harness
(`mbert_export.parity`) and the build's accuracy check (`mbert_export.precision.compare_graphs`).
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..tasks import NUM_CHOICES, SEQUENCE, TEXT_INPUTS, Task

__all__ = ["Thresholds", "THRESHOLDS", "OutputCheck", "VerifyReport", "load_reference", "compare_outputs",
           "pooled_top1", "thresholds_for"]

INPUT_PREFIX, OUTPUT_PREFIX, META_KEY = "input.", "output.", "meta"


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria; None disables a criterion. NaN/inf outputs always fail."""

    #: Largest allowed |runtime - reference| over valid positions, for every output.
    max_abs: float | None = None
    #: Smallest allowed top-1 agreement (fraction) of logits outputs.
    min_top1: float | None = None
    #: Smallest allowed cosine similarity: worst row of hidden states, whole tensor of logits.
    min_cosine: float | None = None


#: Per precision. fp16 keeps a loose absolute bound (logits of O(10) carry ~1e-2 of fp16 error).
THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(max_abs=1e-4),
    "fp16": Thresholds(max_abs=5e-2, min_top1=0.999, min_cosine=0.999),
    "int8": Thresholds(min_top1=0.99, min_cosine=0.99),
    # A float graph computed in bf16 (OpenVINO on AVX512-BF16/AMX CPUs): 8 mantissa bits, so the
    # int8 bars (demo model: 99.12% top-1 on masked held-out text, issue 13).
    "bf16": Thresholds(min_top1=0.99, min_cosine=0.99),
}


#: Precisions from the most exact to the least: a reference should not be less exact than what it judges.
EXACTNESS = ("fp32", "fp16", "bf16", "int8")


def thresholds_for(precision: str) -> Thresholds:
    try:
        return THRESHOLDS[precision]
    except KeyError:
        raise ValueError(f"no verification thresholds for precision {precision!r} (known: "
                         f"{', '.join(THRESHOLDS)}); pass thresholds=Thresholds(...)") from None


@dataclass
class OutputCheck:
    """How one output compares with the reference."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    nan: int
    inf: int
    top1: float | None = None
    top1_count: tuple[int, int] | None = None
    #: Mean share of the reference's top-5 candidates among the runtime's top-5 (outputs with > 5).
    top5: float | None = None
    cosine: float | None = None
    failures: list[str] = field(default_factory=list)
    #: How many finite differences `mean_abs` averages (real positions only), to pool sets by.
    averaged: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures

    def line(self) -> str:
        parts = [f"max abs {self.max_abs:.2e}", f"mean abs {self.mean_abs:.2e}"]
        if self.top1 is not None:
            agree, total = self.top1_count
            parts.append(f"top-1 {100 * self.top1:.2f}% ({agree}/{total})")
        if self.top5 is not None:
            parts.append(f"top-5 overlap {100 * self.top5:.2f}%")
        if self.cosine is not None:
            parts.append(f"cosine >= {self.cosine:.6f}")
        if self.nan or self.inf:
            parts.append(f"{self.nan} NaN, {self.inf} inf")
        status = "ok" if self.passed else "FAIL: " + "; ".join(self.failures)
        return f"  {self.name} {list(self.shape)}: {', '.join(parts)} -> {status}"


@dataclass
class VerifyReport:
    """Result of `verify()` / `compare()`; `passed` is the verdict, `summary()` the printable table."""

    artifact: str
    backend: str
    task: str
    precision: str
    thresholds: Thresholds
    samples: int = 0
    outputs: list[OutputCheck] = field(default_factory=list)
    error: str | None = None
    reference: str = "reference.npz"
    hint: str | None = None  # shown with a failure: what may be wrong with the comparison itself
    command: str = "verify"  # or "compare" (against another runtime): the first word of the summary

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.outputs) and all(o.passed for o in self.outputs)

    def summary(self) -> str:
        t = self.thresholds
        limits = ", ".join(f"{k} {v}" for k, v in (("max abs <=", t.max_abs), ("top-1 >=", t.min_top1),
                                                 ("cosine >=", t.min_cosine)) if v is not None)
        head = (f"{self.command} {self.artifact} ({self.task}, {self.precision}) on {self.backend} against "
                f"{self.reference}: {self.samples} inputs; thresholds: {limits or 'none'}, no NaN/inf")
        lines = [head] + [o.line() for o in self.outputs]
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.hint and not self.passed:
            lines.append(f"  hint: {self.hint}")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)

    __str__ = summary

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "backend": self.backend, "task": self.task,
                "precision": self.precision, "passed": self.passed, "samples": self.samples,
                "error": self.error, "hint": self.hint if not self.passed else None, "thresholds": self.thresholds.__dict__,
                "outputs": [{k: v for k, v in o.__dict__.items()} | {"passed": o.passed} for o in self.outputs]}


def load_reference(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(inputs, outputs, meta) of a reference.npz."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass the reference .npz file (an artifact's is reference.npz)")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (an artifact's reference.npz is written when it is exported: "
                                "re-export it, or pass an existing reference file)")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # numpy's own words for a non-array file advise loading it with allow_pickle (arbitrary code)
        reason = "not an .npz archive of arrays" if "pickle" in str(exc) else str(exc) or type(exc).__name__
        raise ValueError(f"{path} is not a readable reference file ({reason}); re-export the artifact") from None
    inputs = {k[len(INPUT_PREFIX):]: v for k, v in arrays.items() if k.startswith(INPUT_PREFIX)}
    outputs = {k[len(OUTPUT_PREFIX):]: v for k, v in arrays.items() if k.startswith(OUTPUT_PREFIX)}
    try:
        meta = json.loads(str(arrays[META_KEY])) if META_KEY in arrays else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: its '{META_KEY}' entry is not JSON ({exc}); re-export the artifact") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its '{META_KEY}' entry must be a JSON object, got {type(meta).__name__}; "
                         "re-export the artifact")
    missing = [n for n in TEXT_INPUTS if n not in inputs]
    if missing or not outputs:
        raise ValueError(f"{path} lacks {', '.join(missing) or 'outputs'}; re-export the artifact")
    not_integer = [n for n in TEXT_INPUTS if not np.issubdtype(inputs[n].dtype, np.integer)]
    if not_integer:
        raise ValueError(f"{path}: {', '.join(not_integer)} must hold integers, got "
                         f"{inputs[not_integer[0]].dtype}; re-export the artifact")
    return inputs, outputs, meta


def _valid_mask(task: Task, name: str, shape: tuple[int, ...], attention_mask: np.ndarray) -> np.ndarray | None:
    """Boolean mask over the leading (batch[, sequence]) axes of an output: real tokens only."""
    axes = task.outputs.get(name, {})
    if SEQUENCE in axes.values() and attention_mask.ndim == 2:
        seq_axis = next(a for a, n in axes.items() if n == SEQUENCE)
        if seq_axis == 1 and shape[:2] == attention_mask.shape:
            return attention_mask.astype(bool)
    return None


def _decisions(task: Task, name: str, ref: np.ndarray, got: np.ndarray, mask: np.ndarray | None,
               real_vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The argmax decisions of a logits output as [decisions, candidates] score matrices: over
    positions for span logits (real tokens only), over choices for multiple choice, over classes /
    the real vocabulary otherwise (at the `mask` positions)."""
    axes = task.outputs.get(name, {})
    last = ref.ndim - 1
    if axes.get(last) == SEQUENCE:  # start/end logits: argmax over positions
        if mask is not None:
            ref = np.where(mask, ref, -np.inf)
            got = np.where(mask, got, -np.inf)
    elif name == task.vocab_output:
        ref, got = ref[..., :real_vocab_size], got[..., :real_vocab_size]
    if mask is not None and axes.get(last) not in (SEQUENCE, NUM_CHOICES):
        ref, got = ref[mask], got[mask]
    return ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])


def _topk_overlap(ref: np.ndarray, got: np.ndarray, k: int = 5) -> float | None:
    """Mean share of the reference's top-k candidates among the artifact's top-k (None: <= k candidates)."""
    if ref.shape[-1] <= k or not ref.shape[0]:
        return None
    top_ref = np.argpartition(-ref, k, axis=-1)[:, :k]
    top_got = np.argpartition(-got, k, axis=-1)[:, :k]
    shared = (top_ref[:, :, None] == top_got[:, None, :]).any(-1).sum(-1)
    return float(shared.mean() / k)


def _cosine(ref: np.ndarray, got: np.ndarray, mask: np.ndarray | None, per_row: bool) -> float:
    """Cosine similarity: the worst row of the last axis (hidden states), or the whole tensor (logits,
    whose rows can be a near-zero pair of class scores). float32 data, float64 sums."""
    ref = ref.reshape(-1, ref.shape[-1]) if mask is None else ref[mask]
    got = got.reshape(-1, got.shape[-1]) if mask is None else got[mask]
    if not per_row:
        ref, got = ref.reshape(1, -1), got.reshape(1, -1)
    dot = np.einsum("ij,ij->i", ref, got, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", ref, ref, dtype=np.float64) * np.einsum("ij,ij->i", got, got,
                                                                                  dtype=np.float64))
    cos = np.where(norms > 0, dot / np.maximum(norms, 1e-30), 1.0)
    return float(cos.min()) if cos.size else 1.0


def compare_outputs(task: Task, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                    got: dict[str, np.ndarray], thresholds: Thresholds, real_vocab_size: int, *,
                    positions: np.ndarray | None = None, judge_top1: bool = True) -> list[OutputCheck]:
    """One `OutputCheck` per expected output.

    Errors are measured over real tokens (attention mask). Top-1 agreement of token-level logits is
    counted at `positions` (e.g. the masked positions of MLM text) when given, else at every real
    token. `judge_top1=False` reports top-1 without judging it (random token ids make near-tied
    logits, and callers pooling several input sets judge the pooled count instead).
    """
    attention = np.asarray(inputs["attention_mask"])
    checks = []
    for name, ref in expected.items():
        if name not in got:
            check = OutputCheck(name, tuple(ref.shape), math.inf, math.inf, 0, 0)
            check.failures.append("the runtime did not produce this output")
            checks.append(check)
            continue
        # float32 (the outputs' own type): float64 copies of 345M MLM logits at 32 x 512 need 4 GB each.
        ref = np.asarray(ref, dtype=np.float32)
        out = np.asarray(got[name], dtype=np.float32)
        if out.shape != ref.shape:
            check = OutputCheck(name, tuple(out.shape), math.inf, math.inf, 0, 0)
            check.failures.append(f"shape {list(out.shape)} differs from the reference {list(ref.shape)}")
            checks.append(check)
            continue
        mask = _valid_mask(task, name, ref.shape, attention)
        nan, inf = int(np.isnan(out).sum()), int(np.isinf(out).sum())
        diff = np.abs(out - ref)
        if mask is not None:
            diff = diff[mask]
        finite = diff[np.isfinite(diff)]
        max_abs = float(diff.max()) if diff.size else 0.0
        if nan:
            max_abs = math.nan
        mean_abs = float(finite.mean(dtype=np.float64)) if finite.size else 0.0
        check = OutputCheck(name, tuple(out.shape), max_abs, mean_abs, nan, inf, averaged=int(finite.size))
        is_logits = name.endswith("logits")
        clean = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0) if nan or inf else out
        if is_logits:
            where = mask
            if positions is not None and mask is not None and positions.shape == mask.shape:
                where = mask & positions.astype(bool)
            ref_scores, got_scores = _decisions(task, name, ref, np.nan_to_num(out, nan=-np.inf) if nan else out,
                                                where, real_vocab_size)
            agree, total = int((ref_scores.argmax(-1) == got_scores.argmax(-1)).sum()), len(ref_scores)
            check.top1 = agree / total if total else 1.0
            check.top1_count = (agree, total)
            check.top5 = _topk_overlap(ref_scores, got_scores)
            vocab = real_vocab_size if name == task.vocab_output else ref.shape[-1]
            check.cosine = _cosine(ref[..., :vocab], clean[..., :vocab], mask, per_row=False)
        else:
            check.cosine = _cosine(ref, clean, mask, per_row=True)
        if nan or inf:
            check.failures.append(f"{nan} NaN and {inf} inf values")
        if thresholds.max_abs is not None and not max_abs <= thresholds.max_abs:
            check.failures.append(f"max abs {max_abs:.2e} > {thresholds.max_abs:.0e}")
        if is_logits and judge_top1 and thresholds.min_top1 is not None and check.top1 < thresholds.min_top1:
            check.failures.append(f"top-1 agreement {100 * check.top1:.2f}% < {100 * thresholds.min_top1:.2f}%")
        if thresholds.min_cosine is not None and check.cosine < thresholds.min_cosine:
            check.failures.append(f"cosine {check.cosine:.6f} < {thresholds.min_cosine}")
        checks.append(check)
    return checks


def pooled_top1(checks: list[OutputCheck], thresholds: Thresholds) -> dict[str, OutputCheck]:
    """Per output name: top-1 agreement pooled over several input sets, judged against the bar."""
    pooled: dict[str, OutputCheck] = {}
    for check in checks:
        if check.top1_count is None:
            continue
        entry = pooled.setdefault(check.name, OutputCheck(check.name, (), 0.0, 0.0, 0, 0, top1_count=(0, 0)))
        agree, total = entry.top1_count
        entry.top1_count = (agree + check.top1_count[0], total + check.top1_count[1])
        entry.max_abs = max(entry.max_abs, check.max_abs)
        if check.averaged:  # each set's mean abs difference, weighted by the differences it averages
            total_averaged = entry.averaged + check.averaged
            entry.mean_abs += (check.mean_abs - entry.mean_abs) * check.averaged / total_averaged
            entry.averaged = total_averaged
        entry.nan += check.nan
        entry.inf += check.inf
    for entry in pooled.values():
        agree, total = entry.top1_count
        entry.top1 = agree / total if total else 1.0
        if thresholds.min_top1 is not None and entry.top1 < thresholds.min_top1:
            entry.failures.append(f"pooled top-1 agreement {100 * entry.top1:.2f}% ({agree}/{total}) < "
                                  f"{100 * thresholds.min_top1:.2f}%")
    return pooled


def with_overrides(base: Thresholds, overrides: Thresholds | dict[str, Any] | None) -> Thresholds:
    if overrides is None:
        return base
    if isinstance(overrides, Thresholds):
        return overrides
    names = [f.name for f in fields(Thresholds)]
    if not isinstance(overrides, dict) or set(overrides) - set(names) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in overrides.values()):
        raise TypeError(f"thresholds must be a Thresholds or a dict of {', '.join(names)} to numbers (or None), "
                        f"got {overrides!r}")
    return replace(base, **overrides)
