"""`mbert_export.runtime`: OrtMegatronBert task methods against the Hugging Face pipelines, bad input,
batching, threads, and the reference-vector self-check (`verify`).

Tiny random models (the `tiny` preset, a WordPiece vocabulary built here) are exported once per module;
transformers is the oracle: `pipeline("fill-mask" | "text-classification" | "token-classification")`
on the same folder, and for question answering (removed from transformers 5) a port of the
transformers 4.53 QuestionAnsweringPipeline over transformers' fast tokenizer and model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from helpers import run_in_threads, run_without_modules  # noqa: E402
from mbert_export.config import preset_config  # noqa: E402
from mbert_export.export import export_onnx  # noqa: E402
from mbert_export.modeling import MODEL_CLASSES  # noqa: E402
from mbert_export.parity import write_reference_vectors  # noqa: E402
from mbert_export.runtime import (ArtifactError, OrtMegatronBert, Thresholds, compare,  # noqa: E402
                                  read_onnx_metadata)
from mbert_export.tasks import TASKS  # noqa: E402
from mbert_export.tokenization import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a an of is was in on to and or but it he she they we you i this that what who where when how "
         "why which paris france capital city river seine london england berlin germany new york john mary "
         "smith lives works born at for with by from story about play big small old ##s ##ed ##ing ##er ##ly "
         "don ' t").split()
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-\"():;")
VOCAB = list(dict.fromkeys(SPECIALS + WORDS + CHARS + ["##" + c for c in CHARS]))
MAX_POSITIONS = 64
#: Padded vocabulary of the masked-LM model: rows beyond the tokenizer, as in Megatron-LM checkpoints.
MLM_PADDING = 11
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
SENTIMENT = {0: "negative", 1: "neutral", 2: "positive"}

TEXTS = [
    "Paris is the capital of France.",
    "John Smith lives in New York.",
    "Mary was born in Berlin, Germany!",
    "what is the old river in london?",
    "they don't play with the big city",
]
QA_CONTEXT = ("John Smith lives in New York. Mary was born in Berlin, Germany. The Seine is the river of Paris, "
              "the capital city of France. London is in England; the old river is big. They play by the river "
              "when it is small.")


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return Tokenizer.from_vocab(folder / "vocab.txt", lowercase=True, model_max_length=MAX_POSITIONS)


def _config(task: str, **overrides):
    options = dict(vocab_size=len(VOCAB), max_position_embeddings=MAX_POSITIONS, initializer_range=0.1)
    if task == "mlm":
        options.update(vocab_size=len(VOCAB) + MLM_PADDING, tokenizer_vocab_size=len(VOCAB))
    if task == "sequence-classification":
        options["id2label"] = dict(SENTIMENT)
    if task == "token-classification":
        options["id2label"] = dict(NER_LABELS)
    if task == "question-answering":
        options["id2label"] = {0: "LABEL_0", 1: "LABEL_1"}
    options.update(overrides)
    config = preset_config("tiny", **options)
    config.is_decoder = TASKS[task].is_decoder
    return config


class Built:
    """A saved HF folder with model.onnx exported into it, and the torch model."""

    def __init__(self, folder: Path, model):
        self.folder, self.model = folder, model
        self._runtime = None

    @property
    def runtime(self) -> OrtMegatronBert:
        if self._runtime is None:
            self._runtime = OrtMegatronBert(self.folder)
        return self._runtime


@pytest.fixture(scope="module")
def build(tmp_path_factory, tokenizer):
    """build(task) -> Built, exported once per module and task."""
    cache: dict[str, Built] = {}

    def make(task: str) -> Built:
        if task not in cache:
            torch.manual_seed(sorted(TASKS).index(task))
            model = MODEL_CLASSES[TASKS[task].model_class](_config(task)).eval()
            if task == "mlm":
                # Make the padding rows the most likely tokens: HF would predict them, we must not.
                with torch.no_grad():
                    model.cls.predictions.decoder.bias[len(VOCAB):] = 2.0
            folder = tmp_path_factory.mktemp(task)
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            export_onnx(model, task, folder / "model.onnx", tokenizer_dir=folder)
            write_reference_vectors(model, task, folder)
            cache[task] = Built(folder, model)
        return cache[task]

    return make


def _hf_pipeline(kind: str, folder: Path):
    return transformers.pipeline(kind, model=str(folder), device="cpu")


def _close(a: float, b: float, tol: float = 1e-4) -> bool:
    return abs(float(a) - float(b)) <= tol


# ---------------------------------------------------------------------------- torch-free
def test_runtime_imports_and_runs_without_torch_or_transformers(build):
    folder = build("mlm").folder
    proc = run_without_modules(f"""
from mbert_export.runtime import OrtMegatronBert, TRTMegatronBert
rt = OrtMegatronBert({str(folder)!r})
print(rt.fill_mask('paris is the [MASK] of france.', top_k=2)[0]['token_str'])
print(rt.verify().passed)
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "True"


def test_onnx_metadata_reader_matches_onnx(build):
    onnx = pytest.importorskip("onnx")
    path = build("mlm").folder / "model.onnx"
    expected = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert read_onnx_metadata(path) == expected
    assert expected["mbert_export.real_vocab_size"] == str(len(VOCAB))


# ---------------------------------------------------------------------------- fill-mask
def _hf_fill_mask_without_padding(hf, text, top_k):
    """HF's results with the padding rows (which HF may predict) dropped, keeping the first top_k."""
    everything = hf(text, top_k=len(VOCAB) + MLM_PADDING)
    if everything and isinstance(everything[0], list):
        return [[r for r in per_mask if r["token"] < len(VOCAB)][:top_k] for per_mask in everything]
    return [r for r in everything if r["token"] < len(VOCAB)][:top_k]


def _assert_same_fill(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if isinstance(a, list):
            _assert_same_fill(a, b)
            continue
        assert (a["token"], a["token_str"], a["sequence"]) == (b["token"], b["token_str"], b["sequence"])
        assert _close(a["score"], b["score"]) and abs(a["score"] / b["score"] - 1) < 1e-3


def test_fill_mask_matches_hf_pipeline(build):
    built = build("mlm")
    rt, hf = built.runtime, _hf_pipeline("fill-mask", built.folder)
    raw = hf("paris is the [MASK] of france.", top_k=3)
    assert all(r["token"] >= len(VOCAB) for r in raw), "HF should predict the padding rows here"
    for text in ["Paris is the [MASK] of France.", "john [MASK] in new york!", "[MASK] don't play"]:
        ours = rt.fill_mask(text, top_k=5)
        assert len(ours) == 5 and all(r["token"] < len(VOCAB) for r in ours)
        _assert_same_fill(ours, _hf_fill_mask_without_padding(hf, text, 5))
    # Several masks: one list per mask, sequences keep the special tokens (as HF does).
    multi = "the [MASK] of [MASK] is paris."
    ours = rt.fill_mask(multi, top_k=3)
    assert len(ours) == 2 and all(len(per_mask) == 3 for per_mask in ours)
    assert ours[0][0]["sequence"].startswith("[CLS]")
    _assert_same_fill(ours, _hf_fill_mask_without_padding(hf, multi, 3))
    # A list of texts -> a list of results, padded to a common length inside one batch.
    texts = ["paris is the [MASK].", "the [MASK] of the old river in london is big."]
    ours = rt.fill_mask(texts, top_k=2)
    assert [len(r) for r in ours] == [2, 2]
    for text, result in zip(texts, ours):
        _assert_same_fill(result, _hf_fill_mask_without_padding(hf, text, 2))
    # targets restrict the candidates (HF returns scores of the full softmax).
    ours = rt.fill_mask("paris is the [MASK] of france.", targets=["city", "river", "london"], top_k=5)
    theirs = hf("paris is the [MASK] of france.", targets=["city", "river", "london"], top_k=5)
    _assert_same_fill(ours, theirs)


def test_fill_mask_never_predicts_padding_rows(build):
    rt = build("mlm").runtime
    assert rt.predictable_vocab_size == len(VOCAB) and rt.artifact.vocab_size == len(VOCAB) + MLM_PADDING
    everything = rt.fill_mask("the [MASK] is big.", top_k=10_000)
    assert len(everything) == len(VOCAB)
    assert max(r["token"] for r in everything) == len(VOCAB) - 1


# ---------------------------------------------------------------------------- classification
def test_classify_matches_hf_pipeline(build):
    built = build("sequence-classification")
    rt, hf = built.runtime, _hf_pipeline("text-classification", built.folder)
    for text in TEXTS:
        ours, theirs = rt.classify(text), hf(text)[0]
        assert ours["label"] == theirs["label"] and _close(ours["score"], theirs["score"])
        ours_all, theirs_all = rt.classify(text, top_k=None), hf(text, top_k=None)
        assert [r["label"] for r in ours_all] == [r["label"] for r in theirs_all]
        assert all(_close(a["score"], b["score"]) for a, b in zip(ours_all, theirs_all))
        assert set(r["label"] for r in ours_all) == set(SENTIMENT.values())
    pair = rt.classify("john lives in paris.", text_pair="he works in london.", top_k=2)
    theirs = hf({"text": "john lives in paris.", "text_pair": "he works in london."}, top_k=2)
    assert [r["label"] for r in pair] == [r["label"] for r in theirs]
    assert all(_close(a["score"], b["score"]) for a, b in zip(pair, theirs))
    batch = rt.classify(TEXTS)
    assert batch == [rt.classify(t) for t in TEXTS]


def test_classify_tokens_matches_hf_pipeline(build):
    built = build("token-classification")
    rt = built.runtime
    for aggregation in ("none", "simple"):
        hf = transformers.pipeline("token-classification", model=str(built.folder), device="cpu",
                                   aggregation_strategy=aggregation)
        for text in TEXTS + ["zzyzx smith lives in new york"]:
            ours, theirs = rt.classify_tokens(text, aggregation=aggregation), hf(text)
            key = "entity" if aggregation == "none" else "entity_group"
            fields = [key, "word", "start", "end"] + (["index"] if aggregation == "none" else [])
            assert [{f: e[f] for f in fields} for e in ours] == [{f: e[f] for f in fields} for e in theirs]
            assert all(_close(a["score"], b["score"]) for a, b in zip(ours, theirs))
            assert all(text[e["start"]:e["end"]] for e in ours)
    everything = rt.classify_tokens("john smith lives in new york", ignore_labels=())
    assert len(everything) == len(rt.tokenizer.tokenize("john smith lives in new york"))
    # One label as a string is that label (not its letters); None is HF's default, ["O"].
    label = everything[0]["entity"]
    one = rt.classify_tokens("john smith lives in new york", ignore_labels=label)
    assert one == rt.classify_tokens("john smith lives in new york", ignore_labels=[label]) and len(one) < len(everything)
    assert rt.classify_tokens("john smith", ignore_labels=None) == rt.classify_tokens("john smith")
    with pytest.raises(TypeError, match="ignore_labels must be a label or a list of labels"):
        rt.classify_tokens("john smith", ignore_labels=5)


# ---------------------------------------------------------------------------- question answering
def _hf_question_answering(folder: Path, question: str, context: str, top_k: int = 1, max_answer_len: int = 15,
                           doc_stride: int | None = None, handle_impossible_answer: bool = False):
    """transformers 4.53's QuestionAnsweringPipeline (fast tokenizer path), on transformers' model."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.MegatronBertForQuestionAnswering.from_pretrained(str(folder)).eval()
    max_seq_len = min(tok.model_max_length, 384)
    doc_stride = min(max_seq_len // 2, 128) if doc_stride is None else doc_stride
    enc = tok(text=question, text_pair=context, padding="do_not_pad", truncation="only_second",
              max_length=max_seq_len, stride=doc_stride, return_token_type_ids=True,
              return_overflowing_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    answers, min_null_score = [], 1000000
    for span in range(len(enc["input_ids"])):
        ids = enc["input_ids"][span]
        p_mask = [tok_seq != 1 for tok_seq in enc.sequence_ids(span)]
        for i, token in enumerate(ids):
            if token == tok.cls_token_id:
                p_mask[i] = 0
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([enc["attention_mask"][span]]),
                        token_type_ids=torch.tensor([enc["token_type_ids"][span]]))
        start, end = out.start_logits.numpy(), out.end_logits.numpy()
        undesired = np.abs(np.array([p_mask]).astype(int) - 1) & np.array([enc["attention_mask"][span]])
        blocked = undesired == 0.0
        start = np.where(blocked, -10000.0, start)
        end = np.where(blocked, -10000.0, end)
        start = np.exp(start - start.max(axis=-1, keepdims=True))
        start = start / start.sum()
        end = np.exp(end - end.max(axis=-1, keepdims=True))
        end = end / end.sum()
        if handle_impossible_answer:
            min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
        start[0, 0] = end[0, 0] = 0.0
        outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
        candidates = np.tril(np.triu(outer), max_answer_len - 1)
        flat = candidates.flatten()
        if top_k == 1:
            order = [np.argmax(flat)]
        elif len(flat) < top_k:
            order = np.argsort(-flat)
        else:
            idx = np.argpartition(-flat, top_k)[0:top_k]
            order = idx[np.argsort(-flat[idx])]
        starts, ends = np.unravel_index(order, candidates.shape)[1:]
        keep = np.isin(starts, undesired.nonzero()) & np.isin(ends, undesired.nonzero())
        encoding = enc[span]
        for s, e, score in zip(starts[keep], ends[keep], candidates[0, starts[keep], ends[keep]]):
            try:
                start_index = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
                end_index = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
            except Exception:
                start_index, end_index = encoding.offsets[s][0], encoding.offsets[e][1]
            text = context[start_index:end_index]
            same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
            if same:
                same["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": start_index, "end": end_index, "answer": text})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]


def test_answer_question_matches_hf_pipeline(build, tokenizer):
    built = build("question-answering")
    rt = built.runtime
    long_context = " ".join([QA_CONTEXT] * 2)
    assert len(tokenizer.tokenize(long_context)) > MAX_POSITIONS  # several strided windows
    cases = [("where does john live?", QA_CONTEXT, {}),
             ("what is the capital of france?", long_context, {}),
             ("who was born in berlin?", long_context, {"top_k": 3}),
             ("what river?", QA_CONTEXT, {"top_k": 2, "max_answer_len": 3, "doc_stride": 16}),
             ("what river?", QA_CONTEXT, {"handle_impossible_answer": True})]
    for question, context, options in cases:
        theirs = _hf_question_answering(built.folder, question, context, **options)
        ours = rt.answer_question(question, context, **options)
        ours = ours if isinstance(ours, list) else [ours]
        assert [(a["answer"], a["start"], a["end"]) for a in ours] == [(b["answer"], b["start"], b["end"])
                                                                        for b in theirs]
        assert all(_close(a["score"], b["score"]) for a, b in zip(ours, theirs))
        assert all(context[a["start"]:a["end"]] == a["answer"] for a in ours)
    batch = rt.answer_question(["where does john live?", "who was born in berlin?"], [QA_CONTEXT, long_context])
    assert batch == [rt.answer_question("where does john live?", QA_CONTEXT),
                     rt.answer_question("who was born in berlin?", long_context)]


# ---------------------------------------------------------------------------- other heads
def _hf_twin(built: Built, class_name: str):
    return getattr(transformers, class_name).from_pretrained(str(built.folder)).eval()


def test_next_sentence_multiple_choice_and_embed_match_transformers(build, tokenizer):
    nsp = build("nsp")
    hf = _hf_twin(nsp, "MegatronBertForNextSentencePrediction")
    a, b = ["paris is big.", "john lives in london."], ["it is the capital of france.", "the river is old."]
    batch = tokenizer(a, b)
    with torch.no_grad():
        probs = torch.softmax(hf(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask",
                                                                          "token_type_ids")}).logits, -1).numpy()
    ours = nsp.runtime.next_sentence(a, b)
    for result, p in zip(ours, probs):
        assert result["is_next"] == bool(p[0] >= p[1]) and _close(result["score"], p.max())
    with pytest.raises(TypeError, match="b must be a str or a list of str, got NoneType"):
        nsp.runtime.next_sentence(a[0], None)  # as the Triton client refuses it: NSP judges a pair
    with pytest.raises(ValueError, match=r"text\[1\] holds '\\ud800' at position 2, half of a UTF-16 surrogate"):
        build("mlm").runtime.fill_mask(["a [MASK].", "a \ud800 [MASK]"])  # a lone surrogate: not text

    mc = build("multiple-choice")
    hf = _hf_twin(mc, "MegatronBertForMultipleChoice")
    choices = ["it is in france.", "it is in germany.", "it is a river."]
    batch = tokenizer(["paris is big."] * 3, choices)
    with torch.no_grad():
        logits = hf(**{k: torch.from_numpy(batch[k])[None] for k in ("input_ids", "attention_mask",
                                                                    "token_type_ids")}).logits[0]
    result = mc.runtime.multiple_choice("paris is big.", choices)
    expected = torch.softmax(logits, -1).numpy()
    assert result["index"] == int(expected.argmax())
    assert np.allclose(result["scores"], expected, atol=1e-4)

    base = build("base")
    hf = _hf_twin(base, "MegatronBertModel")
    batch = tokenizer(TEXTS)
    with torch.no_grad():
        out = hf(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")})
    mask = torch.from_numpy(batch["attention_mask"])[..., None].float()
    expected = {"cls": out.last_hidden_state[:, 0], "pooler": out.pooler_output,
                "mean": (out.last_hidden_state * mask).sum(1) / mask.sum(1)}
    for pooling, vectors in expected.items():
        ours = base.runtime.embed(TEXTS, pooling=pooling)
        assert ours.shape == (len(TEXTS), 32) and ours.dtype == np.float32
        assert np.abs(ours - vectors.numpy()).max() <= 1e-4
    assert base.runtime.embed(TEXTS[0]).shape == (32,)


def test_pretraining_and_causal_lm_heads(build, tokenizer):
    pre = build("pretraining")
    hf = _hf_twin(pre, "MegatronBertForPreTraining")
    text = "paris is the [MASK] of france."
    batch = tokenizer(text)
    with torch.no_grad():
        out = hf(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")})
    position = int(np.nonzero(batch["input_ids"][0] == tokenizer.mask_token_id)[0][0])
    probs = torch.softmax(out.prediction_logits[0, position], -1).numpy()
    ours = pre.runtime.fill_mask(text, top_k=4)
    assert [r["token"] for r in ours] == list(np.argsort(-probs)[:4])
    assert np.allclose([r["score"] for r in ours], np.sort(probs)[::-1][:4], atol=1e-5)
    verdict = pre.runtime.next_sentence("paris is big.", "it is in france.")
    assert set(verdict) == {"is_next", "score"} and 0.5 <= verdict["score"] <= 1.0

    causal = build("causal-lm")
    hf = _hf_twin(causal, "MegatronBertForCausalLM")
    batch = tokenizer("john lives in")
    with torch.no_grad():
        logits = hf(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask",
                                                                "token_type_ids")}).logits[0, -2]
    probs = torch.softmax(logits, -1).numpy()
    ours = causal.runtime.next_token("john lives in", top_k=3)
    assert [r["token"] for r in ours] == list(np.argsort(-probs)[:3])
    assert np.allclose([r["score"] for r in ours], np.sort(probs)[::-1][:3], atol=1e-5)
    assert causal.runtime.verify().passed


def test_entity_grouping_matches_hf_on_synthetic_tags(build):
    from mbert_export.runtime import postprocess

    built = build("token-classification")
    hf = transformers.pipeline("token-classification", model=str(built.folder), device="cpu")
    tags = ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-PER", "O", "I-LOC"]
    words = ["john", "smith", "##s", "in", "new", "york", "city", "mary", ".", "paris"]
    entities = [{"entity": tag, "score": 0.5 + i / 40, "index": i + 1, "word": word, "start": 3 * i,
                 "end": 3 * i + 2} for i, (tag, word) in enumerate(zip(tags, words))]
    ours = postprocess.group_entities(built.runtime.tokenizer, entities)
    theirs = hf.group_entities([dict(e) for e in entities])
    assert [{k: e[k] for k in ("entity_group", "word", "start", "end")} for e in ours] == \
        [{k: e[k] for k in ("entity_group", "word", "start", "end")} for e in theirs]
    assert all(_close(a["score"], b["score"], 1e-7) for a, b in zip(ours, theirs))
    assert [e["entity_group"] for e in ours] == ["PER", "O", "LOC", "LOC", "PER", "O", "LOC"]


# ---------------------------------------------------------------------------- refusals and bad input
def test_method_of_another_task_is_refused(build):
    rt = build("mlm").runtime
    with pytest.raises(ValueError, match=r"classify\(\) needs an artifact exported for task "
                                         r"'sequence-classification'.*exported for task 'mlm'"):
        rt.classify("paris")
    with pytest.raises(ValueError, match=r"answer_question\(\).*'question-answering'.*'mlm'"):
        rt.answer_question("where?", "here")
    with pytest.raises(ValueError, match=r"fill_mask\(\).*'mlm' or 'pretraining'.*'sequence-classification'"):
        build("sequence-classification").runtime.fill_mask("paris is the [MASK].")
    with pytest.raises(ValueError, match=r"embed\(\).*'base'.*'mlm'"):
        rt.embed("paris")


@pytest.mark.parametrize("call, error, message", [
    (lambda rt: rt.fill_mask(""), ValueError, "text is empty"),
    (lambda rt: rt.fill_mask("   "), ValueError, "text is empty"),
    (lambda rt: rt.fill_mask(["paris is the [MASK].", ""]), ValueError, r"text\[1\] is empty"),
    (lambda rt: rt.fill_mask([]), ValueError, "empty list"),
    (lambda rt: rt.fill_mask("paris is the capital."), ValueError, r"has no \[MASK\] token"),
    (lambda rt: rt.fill_mask(["[MASK] is big", "no mask"]), ValueError, r"text\[1\] has no \[MASK\]"),
    (lambda rt: rt.fill_mask("the [MASK] " + "river " * 80), ValueError, "accepts at most 64 tokens"),
    (lambda rt: rt.fill_mask(42), TypeError, "must be a str or a list of str, got int"),
    (lambda rt: rt.fill_mask(b"paris [MASK]"), TypeError, "decode bytes first"),
    (lambda rt: rt.fill_mask(["[MASK] ok", None]), TypeError, r"text\[1\] must be a str"),
    (lambda rt: rt.fill_mask("[MASK]", top_k=0), ValueError, "top_k must be a positive integer"),
    (lambda rt: rt.fill_mask("[MASK]", targets=[" "]), ValueError, "none of the targets"),
    (lambda rt: rt.run({"input_ids": np.zeros((1, 65), dtype=np.int64)}), ValueError, "maximum of 64"),
    (lambda rt: rt.run({"input_ids": np.full((1, 4), 10_000)}), ValueError, "must lie in 0.."),
    # uint64 ids at or above 2**63 are reported as given, not wrapped to negative by the int64 cast
    (lambda rt: rt.run({"input_ids": np.full((1, 4), 2**63 + 5, dtype=np.uint64)}), ValueError,
     f"got {2**63 + 5}..{2**63 + 5}"),
    (lambda rt: rt.run({"input_ids": np.zeros((1, 4)), }), TypeError, "must hold integers"),
    (lambda rt: rt.run({"input_ids": np.zeros(4, dtype=np.int64)}), ValueError, "must have 2 axes"),
    (lambda rt: rt.run({"input_ids": np.zeros((1, 4), dtype=np.int64), "pixel": 1}), ValueError, "unknown input"),
    # ONNX Runtime fails inside its Gather on these, OpenVINO answers them with garbage:
    (lambda rt: rt.run({"input_ids": np.zeros((1, 4), dtype=np.int64), "token_type_ids": np.full((1, 4), 5)}),
     ValueError, r"token_type_ids must lie in 0..1 \(the model's segment types\), got 5..5"),
    (lambda rt: rt.run({"input_ids": np.zeros((1, 4), dtype=np.int64), "attention_mask": np.full((1, 4), 7)}),
     ValueError, "attention_mask must lie in 0..1"),
    (lambda rt: rt.fill_mask("the [MASK] " + "river " * 80, truncation="only_second"), ValueError,
     "truncation='only_second' cuts the second text of a pair and there is none"),
    (lambda rt: OrtMegatronBert(None), TypeError, "the artifact is a folder .* path, got NoneType"),
    (lambda rt: OrtMegatronBert(rt.artifact.folder, providers=5), TypeError, "providers must be a name or a list"),
    (lambda rt: OrtMegatronBert(rt.artifact.folder, max_batch=0), ValueError, "max_batch must be a positive integer"),
    (lambda rt: OrtMegatronBert(rt.artifact.folder, max_batch=2.0), ValueError, "max_batch must be a positive integer"),
    (lambda rt: OrtMegatronBert(rt.artifact.folder, session_options="fast"), TypeError,
     "session_options must be an onnxruntime.SessionOptions, got str"),
    (lambda rt: rt.run({"input_ids": [[2, 10, 3], [2, 3]]}), ValueError, "input_ids must be a rectangular array"),
    (lambda rt: rt.run({0: np.zeros((1, 4), dtype=np.int64), "input_ids": np.zeros((1, 4), dtype=np.int64)}),
     ValueError, "unknown input"),
    (lambda rt: rt.verify(thresholds="strict"), TypeError, "thresholds must be a Thresholds or a dict of max_abs"),
    (lambda rt: rt.verify(thresholds={"max_abs": "x"}), TypeError, "thresholds must be a Thresholds"),
    (lambda rt: compare(rt, str(rt.artifact.folder)), TypeError, "compare\\(\\) takes two opened runtimes"),
    (lambda rt: OrtMegatronBert(rt.artifact.folder, tokenizer=5), TypeError,
     "tokenizer must be a folder holding vocab.txt or tokenizer.json, or an mbert_export.tokenization.Tokenizer"),
])
def test_bad_input_raises_clear_errors(build, call, error, message):
    with pytest.raises(error, match=message):
        call(build("mlm").runtime)


@pytest.mark.parametrize("options, message", [
    ({"max_seq_len": "abc"}, "max_seq_len must be a positive integer, got 'abc'"),
    ({"max_seq_len": 40.7}, "max_seq_len must be a positive integer, got 40.7"),
    ({"doc_stride": 2.5}, "doc_stride must be an integer, got 2.5"),
    ({"max_answer_len": 3.0}, "max_answer_len must be a positive integer"),
    ({"max_seq_len": 5}, "or pass a larger max_seq_len than 5"),
])
def test_answer_question_options_are_checked_alike(build, options, message):
    with pytest.raises(ValueError, match=message):
        build("question-answering").runtime.answer_question("where is paris?", "paris is in france.", **options)


def test_build_json_contradicting_the_graph_is_refused(build, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(build("mlm").folder, folder)
    (folder / "build.json").write_text(json.dumps({"task": "sequence-classification"}))
    with pytest.raises(ArtifactError, match="says task 'sequence-classification' but the graph .* was exported for 'mlm'"):
        OrtMegatronBert(folder)
    (folder / "build.json").write_text(json.dumps({"task": "mlm", "precision": "int8"}))  # an fp32 graph
    with pytest.raises(ArtifactError, match="says precision 'int8' but the graph .* is 'fp32' .*copied in"):
        OrtMegatronBert(folder)


def test_truncation_cuts_at_the_maximum_length(build, tokenizer):
    rt = build("sequence-classification").runtime
    long = "paris is the capital of france. " * 20
    with pytest.raises(ValueError, match="but max_length is 64; pass truncation=True"):
        rt.classify(long)
    cut = tokenizer(long, max_length=MAX_POSITIONS, truncation=True)
    assert cut["input_ids"].shape == (1, MAX_POSITIONS)
    logits = rt.run({k: cut[k] for k in ("input_ids", "attention_mask", "token_type_ids")})["logits"][0]
    result = rt.classify(long, truncation=True)
    assert result["label"] == SENTIMENT[int(logits.argmax())]
    rt_mlm = build("mlm").runtime
    assert rt_mlm.fill_mask("the [MASK] " + "river " * 80, truncation=True)


def test_artifact_problems_are_reported(build, tmp_path, tokenizer):
    source = build("mlm").folder
    # A folder without model.onnx.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="has no model.onnx"):
        OrtMegatronBert(tmp_path / "empty")
    with pytest.raises(ArtifactError, match="does not exist"):
        OrtMegatronBert(tmp_path / "missing")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff not a model")
    with pytest.raises(ArtifactError, match="not a valid ONNX model|not an ONNX model"):
        OrtMegatronBert(tmp_path / "junk.onnx")
    # A graph without its tokenizer: run() works, text methods say what is missing.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(source / "model.onnx", bare / "model.onnx")
    rt = OrtMegatronBert(bare)
    assert rt.run({"input_ids": np.array([[2, 10, 3]])})["logits"].shape == (1, 3, len(VOCAB) + MLM_PADDING)
    with pytest.raises(ArtifactError, match="no tokenizer files"):
        rt.fill_mask("paris is the [MASK].")
    assert OrtMegatronBert(bare / "model.onnx", tokenizer=source).fill_mask("[MASK] is big")
    # A tokenizer with more tokens than the model has rows.
    bigger = tmp_path / "bigger_vocab"
    bigger.mkdir()
    (bigger / "vocab.txt").write_text("\n".join(VOCAB + [f"extra{i}" for i in range(40)]) + "\n")
    with pytest.raises(ArtifactError, match=r"has \d+ tokens but the model .* has only \d+ embedding rows"):
        OrtMegatronBert(bare, tokenizer=bigger)
    # ... or more than its real (unpadded) vocabulary.
    some = tmp_path / "some_more"
    some.mkdir()
    (some / "vocab.txt").write_text("\n".join(VOCAB + ["extra0", "extra1"]) + "\n")
    with pytest.raises(ArtifactError, match="real tokens"):
        OrtMegatronBert(bare, tokenizer=some)
    with pytest.raises(ValueError, match="execution provider .* is not available"):
        OrtMegatronBert(source, providers=["CUDAExecutionProvider"])


# ---------------------------------------------------------------------------- batching and threads
def test_batches_are_split_at_max_batch(build):
    built = build("mlm")
    texts = [f"the [MASK] of {w} is big." for w in ("paris", "london", "the old river in new york", "berlin",
                                                    "france")]
    small = OrtMegatronBert(built.folder, max_batch=2)
    calls = []
    infer = small.backend.infer
    small.backend.infer = lambda feeds: calls.append(feeds["input_ids"].shape) or infer(feeds)
    together = small.fill_mask(texts, top_k=3)
    assert [shape[0] for shape in calls] == [2, 2, 1]
    assert calls[0][1] != calls[1][1]  # each batch padded to its own longest text
    one_by_one = [built.runtime.fill_mask(t, top_k=3) for t in texts]
    for a, b in zip(together, one_by_one):
        assert [r["token"] for r in a] == [r["token"] for r in b]
        assert all(_close(x["score"], y["score"], 1e-5) for x, y in zip(a, b))
    feeds = {"input_ids": np.random.default_rng(0).integers(5, len(VOCAB), (5, 9))}
    session = ort.InferenceSession(str(built.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    direct = session.run(None, {"input_ids": feeds["input_ids"], "attention_mask": np.ones((5, 9), np.int64),
                                "token_type_ids": np.zeros((5, 9), np.int64)})[0]
    calls.clear()
    assert np.abs(small.run(feeds)["logits"] - direct).max() <= 1e-5
    assert [shape[0] for shape in calls] == [2, 2, 1]


def test_eight_threads_give_the_serial_results(build):
    rt = build("sequence-classification").runtime
    mlm = build("mlm").runtime
    work = [(rt.classify, (t,), {"top_k": None}) for t in TEXTS] + \
           [(mlm.fill_mask, (t.replace("the", "[MASK]", 1) + " [MASK]",), {}) for t in TEXTS]
    serial = [fn(*args, **kw) for fn, args, kw in work]
    results = run_in_threads(lambda: [fn(*args, **kw) for fn, args, kw in work], threads=8, repeats=3)
    assert len(results) == 8 * 3 and all(r == serial for r in results)


# ---------------------------------------------------------------------------- reference vectors
def test_verify_passes_on_the_artifact_and_fails_when_tampered(build, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    for task in ("mlm", "sequence-classification", "question-answering", "multiple-choice", "base"):
        report = build(task).runtime.verify()
        assert report.passed, report.summary()
        assert "PASSED" in str(report) and report.samples >= 2
    report = build("mlm").runtime.verify()
    logits = report.outputs[0]
    assert logits.top1 == 1.0 and logits.max_abs <= 1e-4 and logits.nan == logits.inf == 0

    # Tamper with the graph: noise on one weight.
    source = build("sequence-classification").folder
    tampered = tmp_path / "tampered"
    shutil.copytree(source, tampered)
    model = onnx.load(str(tampered / "model.onnx"))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(biggest).copy()
    array += np.random.default_rng(0).normal(0, 0.05, array.shape).astype(array.dtype)
    biggest.CopyFrom(numpy_helper.from_array(array, biggest.name))
    onnx.save(model, str(tampered / "model.onnx"))
    report = OrtMegatronBert(tampered).verify()
    assert not report.passed and "FAILED" in report.summary()
    assert "max abs" in report.summary()

    # Tampered reference outputs (NaN) fail too; the precision picks the thresholds.
    rt = OrtMegatronBert(source)
    data = dict(np.load(source / "reference.npz"))
    data["output.logits"][0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **data)
    assert not rt.verify(tmp_path / "nan.npz").passed
    loose = rt.verify(thresholds=Thresholds(min_top1=0.99))
    assert loose.passed and loose.thresholds.max_abs is None
    with pytest.raises(FileNotFoundError, match="does not exist .an artifact.s reference.npz is written when it is exported"):
        rt.verify(tmp_path / "absent.npz")


def test_unreadable_reference_files_are_named_not_tracebacks(build, tmp_path):
    """A reference.npz that is truncated, corrupt, empty, with a bad meta entry or float token ids is
    refused with its path and the fix; one with none of the task's outputs fails with the reason."""
    source = build("mlm").folder
    rt = build("mlm").runtime
    good = (source / "reference.npz").read_bytes()
    data = dict(np.load(source / "reference.npz"))
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0xFF
    cases = {"truncated": good[: len(good) // 2], "crc": bytes(flipped), "empty": b""}
    for name, content in cases.items():
        (tmp_path / f"{name}.npz").write_bytes(content)
    np.savez(tmp_path / "meta.npz", **{**data, "meta": np.array("not json")})
    np.savez(tmp_path / "metalist.npz", **{**data, "meta": np.array("[1, 2]")})
    np.savez(tmp_path / "floatids.npz", **{**data, "input.input_ids": data["input.input_ids"].astype(np.float32)})
    expected = {"truncated": "is not a readable reference file", "crc": "is not a readable reference file",
                "empty": "is not a readable reference file", "meta": "'meta' entry is not JSON",
                "metalist": "'meta' entry must be a JSON object", "floatids": "input_ids must hold integers"}
    for name, message in expected.items():
        with pytest.raises(ValueError, match=message) as caught:
            rt.verify(tmp_path / f"{name}.npz")
        assert f"{name}.npz" in str(caught.value) and "re-export the artifact" in str(caught.value)
    np.savez(tmp_path / "nologits.npz", **{k: v for k, v in data.items() if k != "output.logits"},
             **{"output.other": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="is a folder; pass the reference .npz file"):
        rt.verify(tmp_path)
    report = rt.verify(tmp_path / "nologits.npz")
    assert not report.passed and "lack logits of task 'mlm''s outputs (logits)" in report.summary()
    np.save(tmp_path / "array.npy", data["input.input_ids"])
    with pytest.raises(ValueError, match="array.npy is not a readable reference file \\(a single array"):
        rt.verify(tmp_path / "array.npy")


def test_verify_uses_precision_thresholds_and_compare(build, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    source = build("mlm").folder
    fp16 = tmp_path / "fp16"
    shutil.copytree(source, fp16)
    model = onnx.load(str(fp16 / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "mbert_export.precision":
            prop.value = "fp16"
    onnx.save(model, str(fp16 / "model.onnx"))
    rt16 = OrtMegatronBert(fp16)
    report = rt16.verify()
    assert rt16.precision == "fp16" and report.thresholds.min_top1 == 0.999 and report.passed
    report = compare(build("mlm").runtime, rt16)
    assert report.passed, report.summary()
    assert "hint" not in report.summary()
    from mbert_export.cli import main as cli_main  # the same comparison from the command line, with --report

    for argv, message in (([str(source), "--report", str(tmp_path / "r.md")], "name the .json file to write"),
                          ([str(source)], "are the same graph: comparing it with itself checks nothing")):
        assert cli_main(["compare", "--artifact", str(source / "model.onnx"), "--reference-artifact", *argv]) == 2
    capsys.readouterr()
    assert cli_main(["compare", "--artifact", str(fp16), "--reference-artifact", str(source), "--samples", "4"]) == 2
    assert "--samples applies to --checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds reference vectors of task 'sequence-classification', but .* is a "
                                         "'mlm' artifact: pass its own reference.npz"):
        build("mlm").runtime.verify(build("sequence-classification").folder / "reference.npz")
    with pytest.raises(FileNotFoundError, match="typo.npz does not exist"):
        build("mlm").runtime.verify(tmp_path / "typo.npz")
    (tmp_path / "text.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not a readable reference file \(not an .npz archive of arrays\)"):
        build("mlm").runtime.verify(tmp_path / "text.json")

    written = tmp_path / "compare.json"
    assert cli_main(["compare", "--artifact", str(fp16), "--reference-artifact", str(source), "--report",
                     str(written)]) == 0
    assert json.loads(written.read_text())["passed"] and json.loads(written.read_text())["precision"] == "fp16"
    assert written.with_suffix(".md").read_text().strip().endswith("PASSED")
    meta = json.loads(str(np.load(source / "reference.npz")["meta"]))
    assert meta["task"] == "mlm" and meta["tokenized"] and "[MASK]" in meta["texts"][0]
    bias = next(t for t in model.graph.initializer if "bias" in t.name)
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 0.01, bias.name))
    onnx.save(model, str(fp16 / "model.onnx"))  # now 0.01 off the FP32 graph: fails the FP32 bars
    swapped = compare(OrtMegatronBert(fp16), build("mlm").runtime)  # the FP32 graph judged by the FP16 one
    assert swapped.summary().startswith(f"compare {source} (mlm, fp32)")
    assert not swapped.passed and "hint: the reference is fp16, less exact than the fp32 artifact" in swapped.summary()
    assert "were the two swapped?" in json.loads(json.dumps(swapped.to_dict()))["hint"]


def test_reference_vectors_without_tokenizer_use_random_ids(tmp_path):
    model = MODEL_CLASSES["MegatronBertForTokenClassification"](_config("token-classification")).eval()
    path = write_reference_vectors(model, "token-classification", tmp_path)
    data = np.load(path)
    assert data["input.input_ids"].shape == (4, 16) and data["output.logits"].shape == (4, 16, 5)
    assert not json.loads(str(data["meta"]))["tokenized"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.npz"]  # atomic: no temp files left
