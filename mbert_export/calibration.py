"""Calibration and evaluation text: real English passages turned into model-ready batches.

INT8 calibration measures activation ranges, so it needs real text of the lengths the engine will
serve, not random ids. This module reads the committed corpus (`calibration/corpus/`, prose from
the Python documentation, see `calibration/README.md`) or a user's text file, packs passages into
rows of several sequence lengths, caches the tokenized batches, and warns when the text is mostly
[UNK] for the model's vocabulary. It also builds deterministic BERT-masked batches from the
held-out split and scores masked-LM accuracy, so precision passes can be judged by task quality.

Imports numpy, `tokenizers` (via `Tokenizer`) and the standard library only: no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .fileio import atomic_path
from .tokenization import Tokenizer

__all__ = [
    "SPLITS", "MODEL_INPUTS", "IGNORE_INDEX", "DEFAULT_MAX_UNK_RATIO", "CalibrationTextWarning",
    "corpus_dir", "corpus_path", "load_passages", "load_text_file", "tokenizer_fingerprint",
    "unk_ratio", "check_unk_ratio", "PassagePacker", "build_rows", "bert_mask",
    "calibration_batches", "masked_lm_examples", "mlm_accuracy", "top1_agreement",
    "most_frequent_token_baseline",
]

SPLITS = ("train", "heldout")
#: The three ONNX / TensorRT inputs, in this order.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Label value of positions that are not scored (the PyTorch / Hugging Face convention).
IGNORE_INDEX = -100
#: Share of [UNK] tokens above which calibration text is refused (or warned about).
DEFAULT_MAX_UNK_RATIO = 0.2
#: Bump when the batch layout changes, so stale cache files are not reused.
_CACHE_FORMAT = 1

_REPO_CALIBRATION = Path(__file__).resolve().parent.parent / "calibration"


class CalibrationTextWarning(UserWarning):
    """Calibration or evaluation text that does not suit the tokenizer (e.g. mostly [UNK])."""


# ---------------------------------------------------------------------------- text sources
def corpus_dir() -> Path:
    """Folder of the committed corpus; `MBERT_EXPORT_CORPUS_DIR` overrides it (installed packages)."""
    env = os.environ.get("MBERT_EXPORT_CORPUS_DIR")
    return Path(env) if env else _REPO_CALIBRATION / "corpus"


def corpus_path(split: str = "train") -> Path:
    """Path of a split's text file (one passage per line); `split` is "train" or "heldout"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}; "
                         "for your own text use load_text_file(path)")
    path = corpus_dir() / f"{split}.txt"
    if not path.is_file():
        own = ("or pass your own calibration text with load_text_file(path) (CLI: --int8 --int8-recipe qdq "
               "--calibration PATH)" if split == "train" else
               "which every reduced-precision build is checked on (it cannot be replaced by --calibration)")
        raise FileNotFoundError(
            f"corpus file {path} not found. It ships in the repository (calibration/corpus/), not in an "
            f"installed package: run from a clone, or set MBERT_EXPORT_CORPUS_DIR to a folder holding "
            f"train.txt / heldout.txt, {own}")
    return path


def load_passages(split: str = "train") -> list[str]:
    """The passages of a corpus split. "heldout" is for evaluation only: never calibrate or train on it."""
    return _read_lines(corpus_path(split))


def load_text_file(path: str | os.PathLike) -> list[str]:
    """Passages of a user's UTF-8 text file: blank-line-separated paragraphs, else one per line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise FileNotFoundError(f"cannot read calibration text {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"calibration text {path} is not UTF-8 ({exc.reason} at byte {exc.start}); "
                         "convert it to UTF-8 plain text, one passage per line") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n\n" in text.strip():
        passages = [" ".join(block.split()) for block in text.split("\n\n")]
    else:
        passages = [" ".join(line.split()) for line in text.split("\n")]
    passages = [p for p in passages if p]
    if not passages:
        raise ValueError(f"calibration text {path} holds no text; give plain text, one passage per line")
    return passages


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _sha256_text(passages: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for passage in passages:
        digest.update(passage.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the full tokenizer definition (vocab, normalizer, specials): the cache key part."""
    return hashlib.sha256(tokenizer.backend.to_str().encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------- [UNK] checks
def unk_ratio(tokenizer: Tokenizer, passages: Iterable[str]) -> float:
    """Share of the passages' word pieces (special tokens excluded) that are [UNK]."""
    passages = [p for p in passages if p.strip()]
    if not passages:
        return 0.0
    unk = tokenizer.unk_token_id
    total = hits = 0
    for enc in tokenizer.backend.encode_batch(passages, add_special_tokens=False):
        total += len(enc.ids)
        hits += sum(1 for i in enc.ids if i == unk)
    return hits / total if total else 0.0


def check_unk_ratio(ratio: float, *, what: str = "calibration text",
                    max_ratio: float | None = DEFAULT_MAX_UNK_RATIO, on_excess: str = "raise") -> float:
    """Raise ValueError (on_excess="raise") or warn ("warn") when `ratio` is above `max_ratio`.

    Text that is mostly [UNK] for a vocabulary (another language, another script, binary junk)
    calibrates the [UNK] embedding, not the model: the INT8 ranges would be wrong.
    """
    if on_excess not in ("raise", "warn"):
        raise ValueError(f"on_excess must be 'raise' or 'warn', got {on_excess!r}")
    if max_ratio is None or ratio <= max_ratio:
        return ratio
    message = (f"{what} is {ratio:.1%} [UNK] tokens for this tokenizer (limit {max_ratio:.0%}): it is "
               "probably in another language or script than the model's vocabulary. Calibrate with text "
               "the model was trained on (--calibration PATH), or raise the limit if this is intended.")
    if on_excess == "raise":
        raise ValueError(message)
    warnings.warn(message, CalibrationTextWarning, stacklevel=3)
    return ratio


# ---------------------------------------------------------------------------- packing rows
class PassagePacker:
    """Cuts a stream of passages (in a given order, wrapping around) into rows of word-piece ids.

    A row takes whole passages while they fit; when the next one does not fit, the row ends there
    if it is at least half full (so rows have natural, varied lengths and batches carry padding),
    otherwise the passage is split and its rest starts the next row. Passages are tokenized lazily,
    in chunks, so drawing a few hundred rows from a large corpus is cheap.
    """

    def __init__(self, tokenizer: Tokenizer, passages: Sequence[str] | None = None, *,
                 order: Sequence[int] | None = None, token_ids: Sequence[Sequence[int]] | None = None,
                 chunk: int = 256):
        if (passages is None) == (token_ids is None):
            raise ValueError("give either passages or token_ids")
        self._tokenizer = tokenizer
        self._passages = passages
        self._ids: dict[int, list[int]] = {}
        if token_ids is not None:
            self._ids = {i: list(ids) for i, ids in enumerate(token_ids)}
        self._n = len(passages) if passages is not None else len(token_ids)
        if self._n == 0:
            raise ValueError("no passages to pack")
        self._order = list(range(self._n)) if order is None else [int(i) for i in order]
        self._chunk = chunk
        self._cursor = 0
        self._pending: list[int] = []
        self.wrapped = False

    def _ids_at(self, position: int) -> list[int]:
        index = self._order[position]
        if index not in self._ids:
            todo = [self._order[p] for p in range(position, min(position + self._chunk, len(self._order)))
                    if self._order[p] not in self._ids]
            encodings = self._tokenizer.backend.encode_batch([self._passages[i] for i in todo],
                                                             add_special_tokens=False)
            for i, enc in zip(todo, encodings):
                self._ids[i] = list(enc.ids)
        return self._ids[index]

    def _next_passage(self) -> list[int]:
        for _ in range(len(self._order) + 1):
            if self._cursor >= len(self._order):
                self._cursor, self.wrapped = 0, True
            ids = self._ids_at(self._cursor)
            self._cursor += 1
            if ids:
                return list(ids)
        raise ValueError("every passage tokenizes to nothing")

    def row(self, budget: int) -> list[int]:
        """Up to `budget` word-piece ids (no special tokens); `budget` 0 gives an empty row."""
        if budget < 0:
            raise ValueError(f"row budget must be >= 0, got {budget}")
        row: list[int] = []
        while len(row) < budget:
            if not self._pending:
                self._pending = self._next_passage()
            space = budget - len(row)
            if len(self._pending) <= space:
                row += self._pending
                self._pending = []
            elif row and len(row) >= budget // 2:
                break
            else:
                row += self._pending[:space]
                self._pending = self._pending[space:]
        return row


def build_rows(tokenizer: Tokenizer, packer: PassagePacker, num_rows: int, seq_len: int,
               rng: np.random.Generator, *, pair_prob: float = 0.5,
               pad_to: int | None = None) -> dict[str, np.ndarray]:
    """`num_rows` rows of at most `seq_len` tokens: `[CLS] A [SEP]` or, with `pair_prob`, `[CLS] A [SEP] B [SEP]`.

    A pair splits one packed row at a random point (B gets token type 1), as BERT inputs with two
    segments look; rows shorter than 5 tokens are never pairs (seq_len 2 is `[CLS] [SEP]`). Rows are
    right-padded to `pad_to` (default `seq_len`). Returns int64 `input_ids`, `attention_mask`,
    `token_type_ids` and `special_tokens_mask`.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (room for [CLS] and [SEP]), got {seq_len}")
    width = seq_len if pad_to is None else pad_to
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    out = {
        "input_ids": np.full((num_rows, width), pad_id, dtype=np.int64),
        "attention_mask": np.zeros((num_rows, width), dtype=np.int64),
        "token_type_ids": np.zeros((num_rows, width), dtype=np.int64),
        "special_tokens_mask": np.ones((num_rows, width), dtype=np.int64),
    }
    for r in range(num_rows):
        pair = seq_len >= 5 and rng.random() < pair_prob
        body = packer.row(seq_len - (3 if pair else 2))
        if pair and len(body) >= 2:
            cut = int(rng.integers(1, len(body)))
            ids = [cls_id, *body[:cut], sep_id, *body[cut:], sep_id]
            types = [0] * (cut + 2) + [1] * (len(body) - cut + 1)
            special = [1] + [0] * cut + [1] + [0] * (len(body) - cut) + [1]
        else:
            ids = [cls_id, *body, sep_id]
            types = [0] * len(ids)
            special = [1] + [0] * len(body) + [1]
        n = len(ids)
        out["input_ids"][r, :n] = ids
        out["attention_mask"][r, :n] = 1
        out["token_type_ids"][r, :n] = types
        out["special_tokens_mask"][r, :n] = special
    return out


def bert_mask(input_ids: np.ndarray, special_tokens_mask: np.ndarray, rng: np.random.Generator, *,
              mask_token_id: int, vocab_size: int, special_ids: Iterable[int] = (),
              mask_prob: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: in each row, round(mask_prob * n) of its n ordinary tokens (at least 1) get a label;
    80% of those become [MASK], 10% a random ordinary token, 10% stay. Returns (masked ids, labels),
    labels = IGNORE_INDEX where not selected. Tokens in `special_ids` (e.g. [UNK]) are never picked;
    random tokens come from 0..vocab_size-1 minus `special_ids`.
    """
    if not 0 < mask_prob < 1:
        raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
    ids = np.array(input_ids, dtype=np.int64, copy=True)
    labels = np.full_like(ids, IGNORE_INDEX)
    excluded = set(int(i) for i in special_ids)
    candidates = (np.asarray(special_tokens_mask) == 0) & ~np.isin(ids, list(excluded))
    replacements = np.array([i for i in range(vocab_size) if i not in excluded], dtype=np.int64)
    for r in range(ids.shape[0]):
        positions = np.flatnonzero(candidates[r])
        if positions.size == 0:
            continue
        k = max(1, int(round(mask_prob * positions.size)))
        chosen = np.sort(rng.choice(positions, size=k, replace=False))
        labels[r, chosen] = ids[r, chosen]
        action = rng.random(k)
        ids[r, chosen[action < 0.8]] = mask_token_id
        rand = chosen[(action >= 0.8) & (action < 0.9)]
        ids[r, rand] = rng.choice(replacements, size=rand.size)
    return ids, labels


def _check_lengths(tokenizer: Tokenizer, seq_lengths: Sequence[int]) -> tuple[int, ...]:
    lengths = tuple(int(n) for n in seq_lengths)
    if not lengths:
        raise ValueError("seq_lengths is empty; give at least one sequence length, e.g. (32, 64, 128, 256)")
    for n in lengths:
        if not 2 <= n <= tokenizer.model_max_length:
            raise ValueError(f"sequence length {n} is outside 2..{tokenizer.model_max_length} "
                             "(the tokenizer's model_max_length)")
    return lengths


def _text_source(split: str, passages: Sequence[str] | None) -> tuple[list[str], str, str]:
    """(passages, fingerprint of the text, a name for messages)."""
    if passages is not None:
        passages = [p for p in passages if isinstance(p, str) and p.strip()]
        if not passages:
            raise ValueError("passages holds no text")
        return passages, _sha256_text(passages), "the given calibration text"
    path = corpus_path(split)
    return _read_lines(path), hashlib.sha256(path.read_bytes()).hexdigest(), f"corpus split {split!r}"


def _rows_unk_ratio(tokenizer: Tokenizer, batches: Sequence[Mapping[str, np.ndarray]]) -> float:
    unk = tokenizer.unk_token_id
    total = hits = 0
    for b in batches:
        ordinary = (b["special_tokens_mask"] == 0) & (b["attention_mask"] == 1)
        total += int(ordinary.sum())
        hits += int(((b["input_ids"] == unk) & ordinary).sum())
    return hits / total if total else 0.0


# ---------------------------------------------------------------------------- cache
def _default_cache_dir() -> Path:
    if _REPO_CALIBRATION.is_dir():
        return _REPO_CALIBRATION / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mbert-export" / "calibration"


def _cache_file(cache_dir: Path, kind: str, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]
    return cache_dir / f"{kind}-{digest}.npz"


def _load_cache(path: Path) -> list[dict[str, np.ndarray]] | None:
    try:
        with np.load(path) as data:
            count = int(data["num_batches"])
            batches = [{} for _ in range(count)]
            for name in data.files:
                if name != "num_batches":
                    index, field = name.split(".", 1)
                    batches[int(index)][field] = data[name]
            return batches
    except (OSError, ValueError, KeyError, IndexError):
        return None  # unreadable or stale: rebuilt below


def _save_cache(path: Path, batches: Sequence[Mapping[str, np.ndarray]]) -> None:
    arrays = {f"{i:05d}.{k}": v for i, b in enumerate(batches) for k, v in b.items()}
    arrays["num_batches"] = np.array(len(batches))
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    except OSError as exc:
        warnings.warn(f"could not write the calibration cache {path} ({exc}); continuing without it",
                      CalibrationTextWarning, stacklevel=3)


def _cached(kind: str, key: dict[str, Any], cache_dir: str | os.PathLike | None, use_cache: bool,
            build: Callable[[], list[dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    if not use_cache:
        return build()
    path = _cache_file(Path(cache_dir) if cache_dir is not None else _default_cache_dir(), kind, key)
    if path.is_file():
        batches = _load_cache(path)
        if batches is not None:
            return batches
    batches = build()
    _save_cache(path, batches)
    return batches


# ---------------------------------------------------------------------------- public batch builders
def calibration_batches(
    tokenizer: Tokenizer,
    *,
    split: str = "train",
    passages: Sequence[str] | None = None,
    num_samples: int = 256,
    seq_lengths: Sequence[int] = (32, 64, 128, 256),
    batch_size: int = 8,
    seed: int = 0,
    pair_prob: float = 0.5,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    max_unk_ratio: float | None = DEFAULT_MAX_UNK_RATIO,
    on_unk: str = "raise",
) -> list[dict[str, np.ndarray]]:
    """Tokenized calibration batches of varied sequence lengths, ready for ONNX Runtime / TensorRT.

    `num_samples` rows in batches of `batch_size`; batch j has width `seq_lengths[j % len]`, and
    its rows are passages packed up to that length (some end early, so masks carry padding).
    Text: the corpus `split`, or `passages` (e.g. `load_text_file(path)`), visited in a seeded
    random order. Each batch holds int64 `input_ids`, `attention_mask`, `token_type_ids` and
    `special_tokens_mask` (feed `MODEL_INPUTS` to the model). Batches are cached as .npz under
    `cache_dir` (default `calibration/cache/`), keyed by the tokenizer definition, the text and
    every parameter. Text that is more than `max_unk_ratio` [UNK] raises (or warns, `on_unk="warn"`).
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    lengths = _check_lengths(tokenizer, seq_lengths)
    texts, text_hash, what = _text_source(split, passages)
    key = {"format": _CACHE_FORMAT, "tokenizer": tokenizer_fingerprint(tokenizer), "text": text_hash,
           "num_samples": num_samples, "seq_lengths": lengths, "batch_size": batch_size, "seed": seed,
           "pair_prob": pair_prob}

    def build() -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        packer = PassagePacker(tokenizer, texts, order=rng.permutation(len(texts)))
        batches, done, j = [], 0, 0
        while done < num_samples:
            rows = min(batch_size, num_samples - done)
            batches.append(build_rows(tokenizer, packer, rows, lengths[j % len(lengths)], rng,
                                      pair_prob=pair_prob))
            done, j = done + rows, j + 1
        return batches

    batches = _cached("calib", key, cache_dir, use_cache, build)
    check_unk_ratio(_rows_unk_ratio(tokenizer, batches), what=what, max_ratio=max_unk_ratio, on_excess=on_unk)
    return batches


def masked_lm_examples(
    tokenizer: Tokenizer,
    *,
    split: str = "heldout",
    passages: Sequence[str] | None = None,
    num_samples: int = 256,
    seq_len: int = 128,
    batch_size: int = 16,
    mask_prob: float = 0.15,
    seed: int = 0,
    pair_prob: float = 0.5,
    real_vocab_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Deterministic BERT-masked batches (default: held-out split) to score masked-LM accuracy.

    Rows are packed as in `calibration_batches` (width `seq_len`), then `bert_mask` picks 15% of
    the ordinary tokens (80% [MASK], 10% random, 10% unchanged). Each batch adds `labels` (the
    original id at picked positions, IGNORE_INDEX elsewhere). Random replacement ids come from
    the tokenizer's vocabulary (`real_vocab_size` if smaller), never special tokens.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    (seq_len,) = _check_lengths(tokenizer, (seq_len,))
    texts, text_hash, what = _text_source(split, passages)
    vocab = min(tokenizer.vocab_size, real_vocab_size or tokenizer.vocab_size)
    key = {"format": _CACHE_FORMAT, "tokenizer": tokenizer_fingerprint(tokenizer), "text": text_hash,
           "num_samples": num_samples, "seq_len": seq_len, "batch_size": batch_size, "seed": seed,
           "mask_prob": mask_prob, "pair_prob": pair_prob, "vocab": vocab}

    def build() -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        packer = PassagePacker(tokenizer, texts, order=rng.permutation(len(texts)))
        batches, done = [], 0
        while done < num_samples:
            rows = min(batch_size, num_samples - done)
            batch = build_rows(tokenizer, packer, rows, seq_len, rng, pair_prob=pair_prob)
            batch["input_ids"], batch["labels"] = bert_mask(
                batch["input_ids"], batch["special_tokens_mask"], rng, mask_token_id=tokenizer.mask_token_id,
                vocab_size=vocab, special_ids=tokenizer.all_special_ids, mask_prob=mask_prob)
            batches.append(batch)
            done += rows
        if packer.wrapped:
            warnings.warn(f"{what} is too short for {num_samples} rows of {seq_len} tokens: text repeats, "
                          "so the accuracy is measured on fewer distinct tokens", CalibrationTextWarning,
                          stacklevel=3)
        return batches

    return _cached("mlm", key, cache_dir, use_cache, build)


# ---------------------------------------------------------------------------- scoring
def _real_argmax(logits: Any, real_vocab_size: int | None) -> np.ndarray:
    logits = np.asarray(logits)
    if real_vocab_size is not None:
        if real_vocab_size > logits.shape[-1]:
            raise ValueError(f"real_vocab_size {real_vocab_size} exceeds the logits' vocab dim {logits.shape[-1]}")
        logits = logits[..., :real_vocab_size]  # padded vocab rows are never predictions
    return logits.argmax(-1)


def mlm_accuracy(logits_fn: Callable[[dict[str, np.ndarray]], Any],
                 batches: Iterable[Mapping[str, np.ndarray]], real_vocab_size: int | None) -> float:
    """Top-1 accuracy at the labelled positions of `masked_lm_examples` batches.

    `logits_fn` gets a dict of the int64 `MODEL_INPUTS` and returns (batch, seq, vocab) logits as
    a numpy array (an ONNX Runtime session, a TensorRT engine, or a torch model wrapped in
    `.numpy()`). Columns at or beyond `real_vocab_size` (Megatron-LM vocab padding) are ignored.
    """
    correct = total = 0
    for batch in batches:
        logits = logits_fn({k: batch[k] for k in MODEL_INPUTS})
        predicted = _real_argmax(logits, real_vocab_size)
        scored = batch["labels"] != IGNORE_INDEX
        correct += int((predicted[scored] == batch["labels"][scored]).sum())
        total += int(scored.sum())
    if total == 0:
        raise ValueError("the batches have no labelled positions; build them with masked_lm_examples")
    return correct / total


def top1_agreement(logits_a: Any, logits_b: Any, mask: Any = None, real_vocab_size: int | None = None) -> float:
    """Share of positions (where `mask` is true; all if None) at which both logits pick the same token.

    Used to compare an FP16/INT8 graph with the FP32 reference when labels do not matter.
    """
    a, b = _real_argmax(logits_a, real_vocab_size), _real_argmax(logits_b, real_vocab_size)
    if a.shape != b.shape:
        raise ValueError(f"logits shapes differ: {np.shape(logits_a)} vs {np.shape(logits_b)}")
    selected = np.ones(a.shape, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    if selected.shape != a.shape:
        raise ValueError(f"mask shape {selected.shape} does not match the logits' positions {a.shape}")
    count = int(selected.sum())
    if count == 0:
        raise ValueError("mask selects no positions")
    return float((a[selected] == b[selected]).sum()) / count


def most_frequent_token_baseline(batches: Iterable[Mapping[str, np.ndarray]]) -> tuple[int, float]:
    """(token id, accuracy) of always predicting the most frequent label of the batches themselves.

    An optimistic version of the unigram baseline (it peeks at the answers), so a model that
    beats it has learned context, not just token frequencies.
    """
    labels = np.concatenate([np.asarray(b["labels"])[np.asarray(b["labels"]) != IGNORE_INDEX].ravel()
                             for b in batches])
    if labels.size == 0:
        raise ValueError("the batches have no labelled positions")
    ids, counts = np.unique(labels, return_counts=True)
    best = int(np.argmax(counts))
    return int(ids[best]), float(counts[best]) / labels.size
