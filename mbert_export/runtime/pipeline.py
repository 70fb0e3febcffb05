"""`MegatronBertPipeline`: the task API (fill_mask, classify, ...) over any `Backend`.

Tokenization, batching, task checks and post-processing live here; executing the graph is the
backend's job. `OrtMegatronBert` and `TRTMegatronBert` are this class over two backends. Results use
the Hugging Face pipeline formats (see runtime/postprocess.py).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..tasks import SEQUENCE, TASKS
from . import postprocess as post
from .artifact import Artifact, ArtifactError, positive_int
from .backend import Backend
from .verify import (Thresholds, VerifyReport, compare_outputs, load_reference, thresholds_for,
                     with_overrides)

__all__ = ["MegatronBertPipeline", "DEFAULT_MAX_BATCH"]

#: Batch size used when neither the caller, the backend nor the artifact gives a limit.
DEFAULT_MAX_BATCH = 32
#: Question answering windows: HF's default max_seq_len is min(model limit, 384).
QA_MAX_SEQ_LEN = 384
#: Methods every artifact has, whatever its task.
COMMON_METHODS = ("run", "verify")


def _tasks_with(method: str) -> list[str]:
    return [name for name, task in TASKS.items() if method in task.methods]


def wrong_task_error(method: str, task: str, methods: Sequence[str], where: str) -> ValueError:
    """The error for calling `method` on an artifact (or served model) of another task."""
    owners = _tasks_with(method)
    return ValueError(f"{method}() needs an artifact exported for task {' or '.join(repr(t) for t in owners)}, but "
                      f"{where} was exported for task {task!r}, which offers: {', '.join(m + '()' for m in methods)}")


class MegatronBertPipeline:
    """Task methods over a backend. Thread-safe when the backend is (both shipped backends are)."""

    def __init__(self, backend: Backend, artifact: Artifact, tokenizer: Any = None,
                 max_batch: int | None = None):
        self.backend = backend
        self.artifact = artifact
        self.task = artifact.task
        missing_in = [n for n in self.task.inputs if n not in backend.input_names]
        missing_out = [n for n in self.task.output_names if n not in backend.output_names]
        if missing_in or missing_out:
            raise ArtifactError(
                f"{artifact.name} says task {self.task.name!r} but its graph lacks "
                f"{', '.join(missing_in + missing_out)} (has inputs {list(backend.input_names)}, outputs "
                f"{list(backend.output_names)}); re-export it")
        from ..tokenization import Tokenizer

        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = Tokenizer.from_pretrained(tokenizer)
        elif tokenizer is None:
            tokenizer = artifact.load_tokenizer()
        elif not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a folder holding vocab.txt or tokenizer.json, or an "
                            f"mbert_export.tokenization.Tokenizer, got {type(tokenizer).__name__} (a Hugging Face "
                            "tokenizer: pass the folder it was saved to)")
        if tokenizer is not None:
            artifact.check_tokenizer(tokenizer)
        self.tokenizer = tokenizer

        if max_batch is not None:
            max_batch = positive_int(max_batch, "max_batch")
        limits = [b for b in (max_batch, backend.max_batch, artifact.max_batch) if b]
        self.max_batch = min(limits) if limits else DEFAULT_MAX_BATCH
        seq_limits = [artifact.max_position_embeddings, backend.max_seq, artifact.max_seq_len]
        if tokenizer is not None:
            seq_limits.append(tokenizer.model_max_length)
        self.max_seq_len = min(s for s in seq_limits if s)
        #: Ids that may be predicted: the model's real rows that the tokenizer can also decode.
        self.predictable_vocab_size = min(artifact.real_vocab_size,
                                          tokenizer.vocab_size if tokenizer is not None else artifact.real_vocab_size)
        self.methods = tuple(self.task.methods) + COMMON_METHODS

    # ------------------------------------------------------------------ basics
    @property
    def precision(self) -> str:
        return self.artifact.precision

    @property
    def id2label(self) -> dict[int, str]:
        return dict(self.artifact.id2label)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.artifact.path)!r}, task={self.task.name!r}, "
                f"precision={self.precision!r}, backend={self.backend.describe()!r})")

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require(self, method: str) -> None:
        if method not in self.methods:
            raise wrong_task_error(method, self.task.name, self.methods, self.artifact.name)

    def _tokenizer_for(self, method: str):
        if self.tokenizer is None:
            raise ArtifactError(
                f"{method}() needs a tokenizer, but {self.artifact.folder} has no tokenizer files "
                "(tokenizer.json or vocab.txt): export with tokenizer_dir=<checkpoint folder>, copy the "
                "checkpoint's tokenizer files next to the graph, or pass tokenizer=<folder>")
        return self.tokenizer

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _texts(value: Any, name: str) -> tuple[list[str], bool]:
        """`value` as a list of non-empty strings, and whether a single string was given."""
        if isinstance(value, str):
            texts, single = [value], True
        elif isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{name} is an empty list; pass at least one string")
            texts, single = list(value), False
        else:
            hint = " (decode bytes first: text.decode('utf-8'))" if isinstance(value, (bytes, bytearray)) else ""
            raise TypeError(f"{name} must be a str or a list of str, got {type(value).__name__}{hint}")
        for i, text in enumerate(texts):
            where = name if single else f"{name}[{i}]"
            if not isinstance(text, str):
                raise TypeError(f"{where} must be a str, got {type(text).__name__}")
            if not text.strip():
                raise ValueError(f"{where} is empty; pass some text")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate: tokenizers would refuse it obscurely
                raise ValueError(f"{where} holds {text[exc.start]!r} at position {exc.start}, half of a UTF-16 "
                                 "surrogate pair, not a character; decode the text properly (e.g. "
                                 "bytes.decode('utf-8'))") from None
        return texts, single

    def _pairs(self, first: list[str], single: bool, second: Any, name: str) -> list[str] | None:
        if second is None:
            return None
        pairs, pair_single = self._texts(second, name)
        if pair_single != single or len(pairs) != len(first):
            raise ValueError(f"{name} must match the first texts: a str for a str, a list of the same length "
                             f"({len(first)}) for a list")
        return pairs

    def _encode(self, texts: list[str], pairs: list[str] | None = None, truncation: bool = False,
                offsets: bool = False) -> dict[str, np.ndarray]:
        tokenizer = self.tokenizer
        try:
            return tokenizer(texts, pairs, max_length=self.max_seq_len, truncation=truncation,
                             return_offsets=offsets)
        except ValueError as exc:
            if "tokens long" in str(exc):
                raise ValueError(f"{exc} ({self.artifact.name} accepts at most {self.max_seq_len} tokens)") from None
            raise

    # ------------------------------------------------------------------ execution
    def _seq_axis(self, output: str) -> int | None:
        return next((a for a, n in self.task.outputs[output].items() if n == SEQUENCE), None)

    def _infer(self, feeds: dict[str, np.ndarray], trim: bool) -> dict[str, np.ndarray]:
        """Run in batches of at most `max_batch`; with `trim`, each batch is cut to its longest row
        (right padding) and per-token outputs are padded back with zeros."""
        batch = feeds["input_ids"].shape[0]
        seq = feeds["input_ids"].shape[-1]
        pieces = []
        for start in range(0, batch, self.max_batch):
            stop = min(start + self.max_batch, batch)
            part = {n: v[start:stop] for n, v in feeds.items()}
            if trim:
                length = max(1, int(part["attention_mask"].sum(-1).max()))
                part = {n: np.ascontiguousarray(v[..., :length]) for n, v in part.items()}
            out = self.backend.infer(part)
            if trim:
                for name in self.task.output_names:
                    axis = self._seq_axis(name)
                    if axis is not None and out[name].shape[axis] < seq:
                        pad = [(0, 0)] * out[name].ndim
                        pad[axis] = (0, seq - out[name].shape[axis])
                        out[name] = np.pad(out[name], pad)
            pieces.append(out)
        if len(pieces) == 1:
            return {n: pieces[0][n] for n in self.task.output_names}
        return {n: np.concatenate([p[n] for p in pieces], axis=0) for n in self.task.output_names}

    def _model_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: batch[n] for n in self.task.inputs}

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Raw outputs by name for int inputs `input_ids` (+ optional `attention_mask`, `token_type_ids`).

        Inputs are (batch, sequence) arrays ((batch, num_choices, sequence) for multiple choice); a
        batch over the artifact's maximum is run in pieces. Missing masks default to all ones, missing
        token types to zeros.
        """
        if not isinstance(feeds, dict):
            raise TypeError(f"run() takes a dict of input arrays, got {type(feeds).__name__}")
        unknown = sorted(map(str, set(feeds) - set(self.task.inputs)))
        if unknown:
            raise ValueError(f"run() got unknown input(s) {', '.join(unknown)}; the graph takes "
                             f"{', '.join(self.task.inputs)}")
        if "input_ids" not in feeds:
            raise ValueError("run() needs input_ids")
        rank = len(self.task.input_axes)
        arrays = {}  # as given: cast to int64 only after the range check (uint64 ids >= 2**63 would wrap)
        for name, value in feeds.items():
            try:
                array = np.asarray(value)
            except ValueError:  # numpy: "inhomogeneous shape" for ragged lists
                raise ValueError(f"{name} must be a rectangular array: pad every row to one length (and set "
                                 "attention_mask to 0 on the padding)") from None
            if not np.issubdtype(array.dtype, np.integer):
                raise TypeError(f"{name} must hold integers, got {array.dtype}")
            if array.ndim != rank:
                axes = ", ".join(self.task.input_axes[i] for i in range(rank))
                raise ValueError(f"{name} must have {rank} axes ({axes}), got shape {list(array.shape)}")
            arrays[name] = array
        shape = arrays["input_ids"].shape
        for name, array in arrays.items():
            if array.shape != shape:
                raise ValueError(f"{name} has shape {list(array.shape)} but input_ids has {list(shape)}")
        if 0 in shape:
            raise ValueError(f"run() got an empty input of shape {list(shape)}")
        arrays.setdefault("attention_mask", np.ones(shape, dtype=np.int64))
        arrays.setdefault("token_type_ids", np.zeros(shape, dtype=np.int64))
        if shape[-1] > self.max_seq_len:
            raise ValueError(f"sequence length {shape[-1]} exceeds the maximum of {self.max_seq_len} tokens "
                             f"of {self.artifact.name}")
        # Out-of-range ids fail inside ONNX Runtime's Gather, and OpenVINO answers them with garbage.
        limits = {"input_ids": (self.artifact.vocab_size, "the model's vocabulary"),
                  "token_type_ids": (self.artifact.type_vocab_size, "the model's segment types"),
                  "attention_mask": (2, "1 = attend, 0 = padding")}
        for name, (size, meaning) in limits.items():
            values = arrays[name]
            if values.min() < 0 or values.max() >= size:
                raise ValueError(f"{name} must lie in 0..{size - 1} ({meaning}), got {int(values.min())}.."
                                 f"{int(values.max())}")
        return self._infer({n: arrays[n].astype(np.int64, copy=False) for n in self.task.inputs}, trim=False)

    # ------------------------------------------------------------------ masked LM
    def fill_mask(self, text: str | Sequence[str], top_k: int = 5, targets: str | Sequence[str] | None = None,
                  truncation: bool = False):
        """Predict each [MASK] token: per text a list of {score, token, token_str, sequence}, best first.

        Same format as Hugging Face's fill-mask pipeline: a text with several masks gives one list
        per mask (and `sequence` keeps the special tokens, as HF does); a list of texts gives a list of
        results. `targets` restricts the candidates. Padded vocabulary rows are never predicted.
        """
        self._require("fill_mask")
        tokenizer = self._tokenizer_for("fill_mask")
        positive_int(top_k, "top_k")
        texts, single = self._texts(text, "text")
        targets_ids = post.target_ids(tokenizer, targets) if targets is not None else None
        batch = self._encode(texts, truncation=truncation)
        ids, lengths = batch["input_ids"], batch["attention_mask"].sum(-1)
        for i in range(len(texts)):
            if not (ids[i, :lengths[i]] == tokenizer.mask_token_id).any():
                where = "the text" if single else f"text[{i}]"
                cut = " after truncation" if truncation else ""
                raise ValueError(f"{where} has no {tokenizer.mask_token} token{cut}; fill_mask predicts the "
                                 f"masked token, e.g. \"Paris is the {tokenizer.mask_token} of France.\"")
        logits = self._infer(self._model_inputs(batch), trim=True)[self.task.vocab_output]
        results = [post.fill_mask_row(tokenizer, ids[i, :lengths[i]], logits[i, :lengths[i]], top_k,
                                      self.predictable_vocab_size, targets_ids)
                   for i in range(len(texts))]
        return results[0] if single else results

    def next_token(self, text: str | Sequence[str], top_k: int = 5, truncation: bool = False):
        """Causal LM: the most likely next tokens after `text`, as [{score, token, token_str}]."""
        self._require("next_token")
        tokenizer = self._tokenizer_for("next_token")
        positive_int(top_k, "top_k")
        texts, single = self._texts(text, "text")
        batch = self._encode(texts, truncation=truncation)
        lengths = batch["attention_mask"].sum(-1)
        logits = self._infer(self._model_inputs(batch), trim=True)[self.task.vocab_output]
        results = []
        for i in range(len(texts)):
            # The last text token (before the closing [SEP]) predicts the next one; the causal mask
            # keeps [SEP] out of its view.
            position = max(0, int(lengths[i]) - 2)
            probs = post.softmax(logits[i, position])[: self.predictable_vocab_size]
            results.append([{"score": float(probs[j]), "token": int(j),
                             "token_str": post.decode(tokenizer, [int(j)], skip_special_tokens=False)}
                            for j in post.top_indices(probs, top_k)])
        return results[0] if single else results

    # ------------------------------------------------------------------ classification
    def classify(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None,
                 top_k: int | None = 1, function_to_apply: str | None = None, truncation: bool = False):
        """Sequence classification in HF text-classification format.

        top_k=1: {label, score} per text; top_k=n: the n best [{label, score}]; top_k=None: every label.
        Scores are softmax probabilities (sigmoid for one label or multi-label, raw for regression,
        as HF decides from the config; `function_to_apply` = "softmax"/"sigmoid"/"none" overrides).
        """
        self._require("classify")
        self._tokenizer_for("classify")
        if top_k is not None:
            positive_int(top_k, "top_k")
        texts, single = self._texts(text, "text")
        pairs = self._pairs(texts, single, text_pair, "text_pair")
        function = self._classification_function(function_to_apply)
        logits = self._infer(self._model_inputs(self._encode(texts, pairs, truncation)), trim=True)["logits"]
        logits = logits.astype(np.float32)
        scores = post.softmax(logits) if function == "softmax" else (
            post.sigmoid(logits) if function == "sigmoid" else logits)
        labels = self.artifact.id2label
        results = []
        for row in scores:
            if top_k == 1:
                best = int(row.argmax())
                results.append({"label": labels.get(best, f"LABEL_{best}"), "score": float(row[best])})
                continue
            ranked = sorted(({"label": labels.get(i, f"LABEL_{i}"), "score": float(s)} for i, s in enumerate(row)),
                            key=lambda d: d["score"], reverse=True)
            results.append(ranked if top_k is None else ranked[:top_k])
        return results[0] if single else results

    def _classification_function(self, requested: str | None) -> str:
        if requested is not None:
            if requested not in ("softmax", "sigmoid", "none"):
                raise ValueError(f"function_to_apply must be 'softmax', 'sigmoid' or 'none', got {requested!r}")
            return requested
        problem = self.artifact.problem_type
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or len(self.artifact.id2label) == 1:
            return "sigmoid"
        return "softmax"

    def classify_tokens(self, text: str | Sequence[str], aggregation: str = "none",
                        ignore_labels: str | Sequence[str] | None = ("O",), truncation: bool = False):
        """Token classification in HF format: per text a list of {entity, score, index, word, start, end}.

        aggregation="simple" merges adjacent tokens of one entity (B-/I- tags) into
        {entity_group, score, word, start, end}. Entities labelled in `ignore_labels` (a label or a list;
        None: ["O"], as in HF) are left out.
        """
        self._require("classify_tokens")
        tokenizer = self._tokenizer_for("classify_tokens")
        if aggregation not in ("none", "simple"):
            raise ValueError(f"aggregation must be 'none' or 'simple', got {aggregation!r}")
        texts, single = self._texts(text, "text")
        batch = self._encode(texts, truncation=truncation, offsets=True)
        logits = self._infer(self._model_inputs(batch), trim=True)["logits"]
        lengths = batch["attention_mask"].sum(-1)
        ignore = _labels(("O",) if ignore_labels is None else ignore_labels)
        results = []
        for i, sentence in enumerate(texts):
            n = int(lengths[i])
            entities = post.token_entities(tokenizer, sentence, batch["input_ids"][i, :n], post.softmax(logits[i, :n]),
                                           batch["offset_mapping"][i, :n], batch["special_tokens_mask"][i, :n],
                                           self.artifact.id2label)
            if aggregation == "simple":
                entities = post.group_entities(tokenizer, entities)
            results.append([e for e in entities
                            if e.get("entity") not in ignore and e.get("entity_group") not in ignore])
        return results[0] if single else results

    # ------------------------------------------------------------------ question answering
    def answer_question(self, question: str | Sequence[str], context: str | Sequence[str], top_k: int = 1,
                        max_answer_len: int = 15, doc_stride: int | None = None, max_seq_len: int | None = None,
                        handle_impossible_answer: bool = False, align_to_words: bool = True):
        """Extractive QA in HF format: {score, start, end, answer} (character offsets into `context`).

        Contexts longer than a window are split into windows of `max_seq_len` tokens (default: the
        model limit, at most 384) overlapping by `doc_stride` tokens (default min(max_seq_len // 2, 128)),
        as HF's question-answering pipeline does; answers found in several windows add up. top_k > 1
        gives a list of up to top_k answers.
        """
        self._require("answer_question")
        tokenizer = self._tokenizer_for("answer_question")
        positive_int(top_k, "top_k")
        positive_int(max_answer_len, "max_answer_len")
        questions, single = self._texts(question, "question")
        contexts = self._pairs(questions, single, context, "context")
        if contexts is None:
            raise ValueError("answer_question() needs a context")
        window = min(self.max_seq_len, QA_MAX_SEQ_LEN) if max_seq_len is None else positive_int(max_seq_len,
                                                                                                  "max_seq_len")
        if window > self.max_seq_len:
            raise ValueError(f"max_seq_len={window} exceeds the maximum of {self.max_seq_len} tokens of "
                             f"{self.artifact.name}")
        if doc_stride is not None and (isinstance(doc_stride, bool) or not isinstance(doc_stride, (int, np.integer))):
            raise ValueError(f"doc_stride must be an integer, got {doc_stride!r}")
        stride = min(window // 2, 128) if doc_stride is None else int(doc_stride)
        if stride < 0 or stride > window:
            raise ValueError(f"doc_stride ({stride}) must lie in 0..max_seq_len ({window})")
        windows = []
        for i, (q, c) in enumerate(zip(questions, contexts)):
            try:
                windows += post.qa_windows(tokenizer, i, q, c, window, stride)
            except ValueError as exc:
                if max_seq_len is None:
                    raise
                raise ValueError(f"{exc}, or pass a larger max_seq_len than {window}") from None
        longest = max(len(w.input_ids) for w in windows)
        feeds = {name: np.zeros((len(windows), longest), dtype=np.int64) for name in self.task.inputs}
        feeds["input_ids"][:] = tokenizer.pad_token_id
        for row, w in enumerate(windows):
            n = len(w.input_ids)
            feeds["input_ids"][row, :n] = w.input_ids
            feeds["attention_mask"][row, :n] = 1
            feeds["token_type_ids"][row, :n] = w.token_type_ids
        out = self._infer(feeds, trim=True)
        results = []
        for i, c in enumerate(contexts):
            rows = [r for r, w in enumerate(windows) if w.example == i]
            answers = post.answer_spans([windows[r] for r in rows],
                                        [out["start_logits"][r, :len(windows[r].input_ids)] for r in rows],
                                        [out["end_logits"][r, :len(windows[r].input_ids)] for r in rows],
                                        c, top_k, max_answer_len, handle_impossible_answer, align_to_words)
            results.append((answers[0] if answers else None) if top_k == 1 else answers)
        return results[0] if single else results

    # ------------------------------------------------------------------ pairs and choices
    def next_sentence(self, a: str | Sequence[str], b: str | Sequence[str], truncation: bool = False):
        """Next-sentence prediction: {is_next, score}, score = probability of that verdict."""
        self._require("next_sentence")
        self._tokenizer_for("next_sentence")
        first, single = self._texts(a, "a")
        if b is None:  # the sentence judged as following `a`: required
            raise TypeError("b must be a str or a list of str, got NoneType (next_sentence judges whether b follows a)")
        second = self._pairs(first, single, b, "b")
        name = "seq_relationship_logits" if "seq_relationship_logits" in self.task.outputs else "logits"
        logits = self._infer(self._model_inputs(self._encode(first, second, truncation)), trim=True)[name]
        probs = post.softmax(logits)
        # Index 0 means "b continues a" (BERT / Hugging Face convention).
        results = [{"is_next": bool(p[0] >= p[1]), "score": float(max(p[0], p[1]))} for p in probs]
        return results[0] if single else results

    def multiple_choice(self, prompt: str | Sequence[str], choices: Sequence[str] | Sequence[Sequence[str]],
                        truncation: bool = False):
        """Pick the best continuation: {index, scores} with softmax scores over `choices`.

        For a list of prompts, pass a list of choice lists (one per prompt) and get a list of results.
        """
        self._require("multiple_choice")
        self._tokenizer_for("multiple_choice")
        prompts, single = self._texts(prompt, "prompt")
        if single:
            choice_lists = [choices]
        elif isinstance(choices, (list, tuple)) and len(choices) == len(prompts) and all(
                isinstance(c, (list, tuple)) for c in choices):
            choice_lists = list(choices)
        else:
            raise ValueError("with a list of prompts, choices must be a list of choice lists, one per prompt")
        results = []
        for i, (p, options) in enumerate(zip(prompts, choice_lists)):
            texts, _ = self._texts(list(options) if isinstance(options, (list, tuple)) else options,
                                   "choices" if single else f"choices[{i}]")
            if len(texts) < 2:
                raise ValueError("multiple_choice() needs at least two choices")
            batch = self._encode([p] * len(texts), texts, truncation)
            feeds = {n: batch[n][None] for n in self.task.inputs}
            logits = self._infer(feeds, trim=True)["logits"][0]
            scores = post.softmax(logits)
            results.append({"index": int(scores.argmax()), "scores": [float(s) for s in scores]})
        return results[0] if single else results

    # ------------------------------------------------------------------ embeddings
    def embed(self, texts: str | Sequence[str], pooling: str = "cls", truncation: bool = False) -> np.ndarray:
        """Sentence embeddings (float32): (hidden,) for a str, (n, hidden) for a list.

        pooling: "cls" (last_hidden_state of [CLS]), "mean" (mean over the real tokens, special
        tokens included) or "pooler" (the pooler's tanh output).
        """
        self._require("embed")
        self._tokenizer_for("embed")
        if pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'pooler', got {pooling!r}")
        if pooling == "pooler" and "pooler_output" not in self.task.outputs:
            raise ValueError(f"{self.artifact.name} has no pooler_output; use pooling='cls' or 'mean'")
        items, single = self._texts(texts, "texts")
        batch = self._encode(items, truncation=truncation)
        out = self._infer(self._model_inputs(batch), trim=True)
        if pooling == "pooler":
            vectors = out["pooler_output"].astype(np.float32)
        else:
            hidden = out["last_hidden_state"].astype(np.float32)
            if pooling == "cls":
                vectors = hidden[:, 0]
            else:
                mask = batch["attention_mask"][..., None].astype(np.float32)
                vectors = (hidden * mask).sum(1) / mask.sum(1)
        return vectors[0] if single else vectors

    # ------------------------------------------------------------------ self-check
    def verify(self, reference: str | os.PathLike | None = None,
               thresholds: Thresholds | dict[str, Any] | None = None) -> VerifyReport:
        """Run the artifact's reference inputs and compare with the stored reference outputs.

        `reference` defaults to the artifact folder's reference.npz. Thresholds follow the precision
        (fp32: max abs <= 1e-4; fp16: top-1 >= 99.9% and max abs <= 5e-2; int8: top-1 >= 99%);
        NaN/inf always fails. Returns a report: `.passed`, `print(report)` for the table.
        """
        path = self.artifact.reference_path if reference is None else reference
        inputs, expected, meta = load_reference(path)
        if meta.get("task") not in (None, self.task.name):  # a wrong input, not a failed check
            raise ValueError(f"{path} holds reference vectors of task {meta['task']!r}, but {self.artifact.name} "
                             f"is a {self.task.name!r} artifact: pass its own reference.npz")
        try:
            limits = with_overrides(thresholds_for(self.precision), thresholds)
        except ValueError:
            if thresholds is None:
                raise
            limits = with_overrides(Thresholds(), thresholds)
        report = VerifyReport(str(self.artifact.path), self.backend.describe(), self.task.name, self.precision,
                              limits, samples=int(inputs["input_ids"].shape[0]), reference=str(path))
        missing = [n for n in self.task.output_names if n not in expected]
        if missing:  # known before running anything
            report.error = (f"the reference vectors lack {', '.join(missing)} of task {self.task.name!r}'s "
                            f"outputs ({', '.join(self.task.output_names)}); re-export the artifact")
            return report
        expected = {n: expected[n] for n in self.task.output_names}
        try:
            got = self.run({n: inputs[n] for n in self.task.inputs})
        except (ValueError, RuntimeError) as exc:
            report.error = f"running the reference inputs failed: {exc}"
            return report
        report.outputs = compare_outputs(self.task, inputs, expected, got, limits, self.artifact.real_vocab_size)
        return report


def _labels(labels: Any) -> set[str]:
    """`ignore_labels` as a set: one label or a list of them (a string is one label, not its letters)."""
    if isinstance(labels, str):
        return {labels}
    if not isinstance(labels, (list, tuple, set, frozenset)) or not all(isinstance(x, str) for x in labels):
        raise TypeError(f"ignore_labels must be a label or a list of labels, got {labels!r}")
    return set(labels)
