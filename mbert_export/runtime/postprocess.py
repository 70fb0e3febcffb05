"""Task post-processing in numpy, producing the Hugging Face pipeline result formats.

Each function follows the corresponding transformers pipeline step for step (fill-mask and
token-classification from transformers 5.x; question answering from transformers 4.53, the last
release that had the extractive QA pipeline), so results match HF on the same logits. Decoding goes
through the `tokenizers` backend and transformers' clean-up, as HF's fast tokenizers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..tokenization import _clean_up_tokenization


# ---------------------------------------------------------------------------- math
def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float32)))


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (stable for ties: lower index first)."""
    k = min(k, values.shape[-1])
    if k < values.shape[-1]:
        part = np.argpartition(-values, k - 1)[:k]
    else:
        part = np.arange(values.shape[-1])
    order = np.lexsort((part, -values[part]))
    return part[order]


# ---------------------------------------------------------------------------- decoding
def decode(tokenizer, ids: Sequence[int], skip_special_tokens: bool) -> str:
    """transformers' fast-tokenizer decode: the backend decoder, then `clean_up_tokenization`."""
    if tokenizer.backend.decoder is None:  # a tokenizer.json without a decoder: BERT's rules
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    text = tokenizer.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
    return _clean_up_tokenization(text)


def tokens_to_string(tokenizer, tokens: list[str]) -> str:
    """transformers' `convert_tokens_to_string` of a fast tokenizer (the backend's decoder)."""
    decoder = tokenizer.backend.decoder
    return decoder.decode(tokens) if decoder is not None else " ".join(tokens)


# ---------------------------------------------------------------------------- fill-mask
def fill_mask_row(tokenizer, ids: np.ndarray, logits: np.ndarray, top_k: int, limit: int,
                  target_ids: np.ndarray | None) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
    """One text: `ids` its (unpadded) input ids, `logits` (seq, vocab). HF's FillMaskPipeline.postprocess.

    Probabilities are a softmax over the whole (padded) vocabulary, as HF computes them; candidates
    are the first `limit` rows (the tokenizer's real tokens) or `target_ids`.
    """
    mask_id, pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
    positions = np.nonzero(ids == mask_id)[0]
    probs = softmax(logits[positions])
    if target_ids is not None:
        probs = probs[:, target_ids]
    else:
        probs = probs[:, :limit]
    single = len(positions) == 1
    result = []
    for i, position in enumerate(positions):
        row = []
        for j in top_indices(probs[i], top_k):
            token = int(target_ids[j]) if target_ids is not None else int(j)
            tokens = ids.copy()
            tokens[position] = token
            tokens = tokens[tokens != pad_id]
            row.append({"score": float(probs[i, j]), "token": token,
                        "token_str": decode(tokenizer, [token], skip_special_tokens=False),
                        "sequence": decode(tokenizer, tokens, skip_special_tokens=single)})
        result.append(row)
    return result[0] if single else result


def target_ids(tokenizer, targets: str | Sequence[str]) -> np.ndarray:
    """HF's FillMaskPipeline.get_target_ids: vocabulary entries, else the first token of the target."""
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, (list, tuple)) or not targets:
        raise TypeError(f"targets must be a str or a non-empty list of str, got {targets!r}")
    vocab = tokenizer.get_vocab()
    ids = []
    for target in targets:
        if not isinstance(target, str):
            raise TypeError(f"targets must be strings, got {type(target).__name__}")
        index = vocab.get(target)
        if index is None:
            pieces = tokenizer.backend.encode(target, add_special_tokens=False).ids
            if not pieces:
                continue
            index = pieces[0]
        ids.append(int(index))
    if not ids:
        raise ValueError(f"none of the targets {list(targets)!r} maps to a token of the vocabulary")
    return np.array(sorted(set(ids)), dtype=np.int64)


# ---------------------------------------------------------------------------- token classification
def token_entities(tokenizer, sentence: str, ids: np.ndarray, scores: np.ndarray, offsets: np.ndarray,
                   special: np.ndarray, id2label: dict[int, str]) -> list[dict[str, Any]]:
    """HF's gather_pre_entities + aggregate(NONE): one entity per non-special token."""
    unk = tokenizer.unk_token_id
    entities = []
    for idx in range(len(ids)):
        if special[idx]:
            continue
        start, end = int(offsets[idx][0]), int(offsets[idx][1])
        word = tokenizer.convert_ids_to_tokens(int(ids[idx]))
        if int(ids[idx]) == unk:
            word = sentence[start:end]
        label = int(scores[idx].argmax())
        entities.append({"entity": id2label.get(label, f"LABEL_{label}"), "score": float(scores[idx][label]),
                         "index": idx, "word": word, "start": start, "end": end})
    return entities


def _tag(name: str) -> tuple[str, str]:
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name


def group_entities(tokenizer, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """HF's group_entities (aggregation "simple"): adjacent tokens with one tag become one entity."""
    groups, current = [], []

    def close():
        groups.append({"entity_group": current[0]["entity"].split("-", 1)[-1],
                       "score": float(np.mean([e["score"] for e in current])),
                       "word": tokens_to_string(tokenizer, [e["word"] for e in current]),
                       "start": current[0]["start"], "end": current[-1]["end"]})

    for entity in entities:
        if not current:
            current.append(entity)
            continue
        bi, tag = _tag(entity["entity"])
        _, last_tag = _tag(current[-1]["entity"])
        if tag == last_tag and bi != "B":
            current.append(entity)
        else:
            close()
            current = [entity]
    if current:
        close()
    return groups


# ---------------------------------------------------------------------------- question answering
@dataclass
class QAWindow:
    """One strided window of a (question, context) pair: `[CLS] question [SEP] context[span] [SEP]`."""

    example: int
    input_ids: list[int]
    token_type_ids: list[int]
    #: 1 where the token cannot be in an answer (question, [SEP]); the [CLS] token stays 0, as in HF.
    p_mask: list[int]
    #: Window index of the first context token, and the context tokens' offsets and word ids.
    context_start: int
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]


def qa_windows(tokenizer, example: int, question: str, context: str, max_seq_len: int,
               doc_stride: int) -> list[QAWindow]:
    """The windows HF's fast tokenizer makes with truncation="only_second" and `stride=doc_stride`."""
    backend = tokenizer.backend
    q = backend.encode(question, add_special_tokens=False)
    c = backend.encode(context, add_special_tokens=False)
    budget = max_seq_len - len(q.ids) - tokenizer.num_special_tokens_to_add(pair=True)
    if budget <= 0:
        raise ValueError(f"question {example} is {len(q.ids)} tokens long and leaves no room for the context "
                         f"in a {max_seq_len}-token window; shorten the question")
    n = len(c.ids)
    if n <= budget:
        spans = [(0, n)]
    else:
        if doc_stride >= budget:
            raise ValueError(f"doc_stride={doc_stride} must be smaller than the context room of a window "
                             f"({budget} tokens for question {example}); lower doc_stride")
        spans, step = [], budget - doc_stride
        for start in range(0, n, step):
            stop = min(start + budget, n)
            spans.append((start, stop))
            if stop == n:
                break
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    windows = []
    for start, stop in spans:
        ids = [cls, *q.ids, sep, *c.ids[start:stop], sep]
        head = len(q.ids) + 2
        types = [0] * head + [1] * (stop - start + 1)
        p_mask = [0] + [1] * (head - 1) + [0] * (stop - start) + [1]
        windows.append(QAWindow(example, ids, types, p_mask, head, list(c.offsets[start:stop]),
                                list(c.word_ids[start:stop])))
    return windows


def decode_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int,
                 allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HF's decode_spans: best (start, end) token pairs with end >= start and length <= max_answer_len."""
    outer = np.matmul(start[:, None], end[None, :])
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        part = np.argpartition(-flat, top_k)[0:top_k]
        order = part[np.argsort(-flat[part])]
    starts, ends = np.unravel_index(order, candidates.shape)
    keep = np.isin(starts, allowed.nonzero()) & np.isin(ends, allowed.nonzero())
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[starts, ends]


def _char_span(window: QAWindow, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """HF's get_indices: token span -> character span in the context (whole words when aligning)."""
    first, count = window.context_start, len(window.offsets)

    def offset(token: int) -> tuple[int, int]:
        i = token - first
        return window.offsets[i] if 0 <= i < count else (0, 0)

    if align_to_words and 0 <= s - first < count and 0 <= e - first < count:
        start_word, end_word = window.word_ids[s - first], window.word_ids[e - first]
        if start_word is not None and end_word is not None:
            start_tokens = [i for i, w in enumerate(window.word_ids) if w == start_word]
            end_tokens = [i for i, w in enumerate(window.word_ids) if w == end_word]
            return int(window.offsets[start_tokens[0]][0]), int(window.offsets[end_tokens[-1]][1])
    return int(offset(s)[0]), int(offset(e)[1])


def answer_spans(windows: list[QAWindow], start_logits: list[np.ndarray], end_logits: list[np.ndarray],
                 context: str, top_k: int, max_answer_len: int, handle_impossible_answer: bool,
                 align_to_words: bool) -> list[dict[str, Any]]:
    """HF 4.53 QuestionAnsweringPipeline.postprocess over the windows of one question."""
    min_null_score = 1000000.0
    answers: list[dict[str, Any]] = []
    for window, start_, end_ in zip(windows, start_logits, end_logits):
        allowed = 1 - np.asarray(window.p_mask)
        blocked = allowed == 0
        start = np.where(blocked, np.float32(-10000.0), np.asarray(start_, dtype=np.float32))
        end = np.where(blocked, np.float32(-10000.0), np.asarray(end_, dtype=np.float32))
        start = np.exp(start - start.max())
        start = start / start.sum()
        end = np.exp(end - end.max())
        end = end / end.sum()
        if handle_impossible_answer:
            min_null_score = min(min_null_score, float(start[0] * end[0]))
        start[0] = end[0] = 0.0
        starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, allowed)
        for s, e, score in zip(starts, ends, scores):
            char_start, char_end = _char_span(window, int(s), int(e), align_to_words)
            text = context[char_start:char_end]
            same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
            if same is not None:
                same["score"] += float(score)
            else:
                answers.append({"score": float(score), "start": char_start, "end": char_end, "answer": text})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
