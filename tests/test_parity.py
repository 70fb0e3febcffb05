"""Reference vectors (`mbert_export.parity`) and the comparison behind `verify()` / `compare()`.

The end-to-end self-check on exported graphs is in test_runtime.py; here: what write_reference_vectors
stores for every task, and how `compare_outputs` judges outputs per precision (synthetic arrays).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mbert_export.config import preset_config  # noqa: E402
from mbert_export.modeling import MODEL_CLASSES  # noqa: E402
from mbert_export.parity import DEFAULT_TEXTS, write_reference_vectors  # noqa: E402
from mbert_export.runtime.verify import (THRESHOLDS, Thresholds, VerifyReport, compare_outputs,  # noqa: E402
                                         load_reference, pooled_top1, thresholds_for)
from mbert_export.tasks import TASKS  # noqa: E402
from mbert_export.tokenization import Tokenizer  # noqa: E402

VOCAB = list(dict.fromkeys(
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?-'")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    + [w.strip(".,?!").lower() for text in DEFAULT_TEXTS for w in text.split()]))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return Tokenizer.from_vocab(path, lowercase=True, model_max_length=48)


def _model(task: str, padded: int = 0):
    config = preset_config("tiny", vocab_size=len(VOCAB) + padded, tokenizer_vocab_size=len(VOCAB),
                           max_position_embeddings=64)
    config.is_decoder = TASKS[task].is_decoder
    torch.manual_seed(0)
    return MODEL_CLASSES[TASKS[task].model_class](config).eval()


@pytest.mark.parametrize("task", list(TASKS))
def test_reference_vectors_hold_tokenized_inputs_and_reference_outputs(task, tokenizer, tmp_path):
    model = _model(task, padded=6)
    tokenizer.save_pretrained(tmp_path)  # picked up from the folder
    path = write_reference_vectors(model, task, tmp_path)
    assert path == tmp_path / "reference.npz"
    inputs, outputs, meta = load_reference(path)
    assert meta["task"] == task and meta["tokenized"] and meta["model_class"] == TASKS[task].model_class
    assert sorted(outputs) == sorted(TASKS[task].output_names)
    ids = inputs["input_ids"]
    assert ids.dtype == np.int64 and ids.shape[-1] <= 48  # the tokenizer's limit
    assert ids.max() < len(VOCAB)
    rows = ids.reshape(-1, ids.shape[-1])
    assert (rows[:, 0] == tokenizer.cls_token_id).all()
    assert len(set(inputs["attention_mask"].reshape(-1, ids.shape[-1]).sum(-1))) > 1  # padded rows
    if task in ("mlm", "pretraining"):
        assert (ids == tokenizer.mask_token_id).any(axis=-1).all()
    if task in ("nsp", "pretraining", "question-answering", "multiple-choice"):
        assert inputs["token_type_ids"].max() == 1
    if task == "multiple-choice":
        assert ids.ndim == 3 and ids.shape[1] == 3
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    for name, value in outputs.items():
        assert value.dtype == np.float32
        assert np.array_equal(value, expected[name].numpy())


def test_explicit_texts_and_tokenizer_argument(tokenizer, tmp_path):
    model = _model("sequence-classification")
    path = write_reference_vectors(model, "sequence-classification", tmp_path, tokenizer=tokenizer,
                                   texts=["one text", "and another, longer text"])
    inputs, outputs, meta = load_reference(path)
    assert meta["texts"] == ["one text", "and another, longer text"]
    assert inputs["input_ids"].shape[0] == 2 and outputs["logits"].shape == (2, 2)
    assert len(DEFAULT_TEXTS) >= 4
    with pytest.raises(ValueError, match="non-empty strings"):
        write_reference_vectors(model, "sequence-classification", tmp_path, tokenizer=tokenizer, texts=["", "x"])
    bigger = Tokenizer.from_vocab(_write(tmp_path / "big.txt", VOCAB + [f"w{i}" for i in range(200)]),
                                  lowercase=True)
    with pytest.raises(ValueError, match="embedding rows"):
        write_reference_vectors(model, "sequence-classification", tmp_path, tokenizer=bigger)


def _write(path, tokens):
    path.write_text("\n".join(tokens) + "\n")
    return path


def test_without_tokenizer_random_ids_from_the_real_vocabulary(tmp_path):
    model = _model("mlm", padded=20)
    path = write_reference_vectors(model, "mlm", tmp_path)
    inputs, outputs, meta = load_reference(path)
    assert not meta["tokenized"] and meta["texts"] == []
    assert inputs["input_ids"].shape == (4, 16) and inputs["input_ids"].max() < len(VOCAB)
    assert outputs["logits"].shape == (4, 16, len(VOCAB) + 20)
    assert [p.name for p in tmp_path.iterdir()] == ["reference.npz"]  # no temp file left behind
    mc = write_reference_vectors(_model("multiple-choice"), "multiple-choice", tmp_path / "mc")
    assert load_reference(mc)[0]["input_ids"].shape == (4, 3, 16)


def test_load_reference_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist .an artifact.s reference.npz is written when it is exported"):
        load_reference(tmp_path / "reference.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable reference file"):
        load_reference(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", **{"input.input_ids": np.zeros((1, 2), np.int64)})
    with pytest.raises(ValueError, match="lacks attention_mask, token_type_ids"):
        load_reference(tmp_path / "partial.npz")


# ---------------------------------------------------------------------------- judging outputs
def _mlm_case(seed=0, batch=4, seq=8, vocab=30, real=25):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[1:, seq // 2:] = 0
    inputs = {"input_ids": np.zeros((batch, seq), np.int64), "attention_mask": mask,
              "token_type_ids": np.zeros((batch, seq), np.int64)}
    logits = rng.normal(0, 3, (batch, seq, vocab)).astype(np.float32)
    return inputs, logits, real


def test_thresholds_per_precision():
    assert THRESHOLDS["fp32"].max_abs == 1e-4
    assert THRESHOLDS["fp16"].min_top1 == 0.999 and THRESHOLDS["fp16"].max_abs is not None
    assert THRESHOLDS["int8"].min_top1 == 0.99 and THRESHOLDS["int8"].max_abs is None
    with pytest.raises(ValueError, match="no verification thresholds for precision 'fp8'"):
        thresholds_for("fp8")


def test_compare_outputs_judges_errors_top1_and_nan():
    task = TASKS["mlm"]
    inputs, ref, real = _mlm_case()
    judge = lambda got, precision: compare_outputs(task, inputs, {"logits": ref}, {"logits": got},  # noqa: E731
                                                   thresholds_for(precision), real)[0]
    assert judge(ref + 5e-5, "fp32").passed
    failed = judge(ref + 5e-4, "fp32")
    assert not failed.passed and "max abs 5.00e-04 > 1e-04" in failed.failures[0]
    # Padded positions are not judged, padded vocabulary rows not counted for top-1.
    noisy = ref.copy()
    noisy[1, -1] += 100.0
    noisy[..., real:] += 100.0
    check = judge(noisy, "int8")
    assert check.passed and check.top1 == 1.0 and check.top1_count == (20, 20)
    # One flipped argmax among 20 valid positions: 95% < 99%.
    flipped = ref.copy()
    best = flipped[0, 0, :real].argmax()
    flipped[0, 0, (best + 1) % real] = flipped[0, 0, best] + 1.0
    check = judge(flipped, "int8")
    assert not check.passed and check.top1 == 0.95 and "top-1 agreement 95.00% < 99.00%" in check.failures[0]
    nan = ref.copy()
    nan[0, 0, 0] = np.nan
    nan[0, 1, 0] = np.inf
    check = judge(nan, "int8")
    assert not check.passed and (check.nan, check.inf) == (1, 1)
    shape = judge(ref[:, :4], "fp32")
    assert not shape.passed and "differs from the reference" in shape.failures[0]


def test_compare_outputs_on_hidden_states_uses_cosine():
    task = TASKS["base"]
    inputs, _, _ = _mlm_case()
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(4, 8, 16)).astype(np.float32)
    pooled = rng.normal(size=(4, 16)).astype(np.float32)
    expected = {"last_hidden_state": hidden, "pooler_output": pooled}
    close = {"last_hidden_state": hidden * 1.001, "pooler_output": pooled}
    checks = compare_outputs(task, inputs, expected, close, thresholds_for("int8"), 30)
    assert all(c.passed for c in checks) and checks[0].cosine > 0.999
    far = {"last_hidden_state": -hidden, "pooler_output": pooled}
    assert not compare_outputs(task, inputs, expected, far, thresholds_for("fp16"), 30)[0].passed


def test_report_summary_and_verdict():
    task = TASKS["question-answering"]
    inputs, _, _ = _mlm_case()
    start = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)
    outputs = compare_outputs(task, inputs, {"start_logits": start, "end_logits": start},
                              {"start_logits": start, "end_logits": start[:, ::-1].copy()}, Thresholds(min_top1=0.99), 30)
    report = VerifyReport("art", "backend", "question-answering", "int8", Thresholds(min_top1=0.99), 4, outputs)
    assert outputs[0].passed and not outputs[1].passed and not report.passed
    text = report.summary()
    assert "start_logits [4, 8]" in text and "FAILED" in text and text.endswith("FAILED")
    assert json.dumps(report.to_dict())
    assert not VerifyReport("art", "b", "mlm", "fp32", Thresholds()).passed  # nothing compared


def test_top1_at_given_positions_unjudged_sets_and_pooling():
    task = TASKS["mlm"]
    inputs, ref, real = _mlm_case()
    flipped = ref.copy()
    best = flipped[0, 0, :real].argmax()
    flipped[0, 0, (best + 1) % real] = flipped[0, 0, best] + 1.0  # one flip, at position (0, 0)
    positions = np.zeros(inputs["attention_mask"].shape, bool)
    positions[0, :3] = True
    limits = thresholds_for("int8")
    at = compare_outputs(task, inputs, {"logits": ref}, {"logits": flipped}, limits, real, positions=positions)[0]
    assert at.top1_count == (2, 3) and not at.passed
    positions[0, 0] = False
    assert compare_outputs(task, inputs, {"logits": ref}, {"logits": flipped}, limits, real,
                           positions=positions)[0].passed
    unjudged = compare_outputs(task, inputs, {"logits": ref}, {"logits": flipped}, limits, real, judge_top1=False)[0]
    assert unjudged.passed and unjudged.top1_count == (19, 20)
    assert 0.99 < unjudged.cosine < 1.0  # logits get a whole-tensor cosine
    # Pooled over many sets, one flip in 200 decisions meets 99 %; in 20 it does not.
    clean = compare_outputs(task, inputs, {"logits": ref}, {"logits": ref}, limits, real, judge_top1=False)[0]
    ten = pooled_top1([unjudged] + [clean] * 9, limits)["logits"]
    assert ten.passed and ten.max_abs == unjudged.max_abs > 0
    assert ten.mean_abs == pytest.approx(unjudged.mean_abs / 10)  # the sets' mean abs, weighted by their size
    pooled = pooled_top1([unjudged], limits)["logits"]
    assert not pooled.passed and "pooled top-1 agreement 95.00% (19/20) < 99.00%" in pooled.failures[0]


def test_top5_overlap_counts_shared_candidates():
    task = TASKS["mlm"]
    inputs, ref, real = _mlm_case()
    got = ref.copy()
    got[0, 0, ref[0, 0, :real].argmax()] = -100.0  # the best candidate of one position drops out
    check = compare_outputs(task, inputs, {"logits": ref}, {"logits": got}, thresholds_for("int8"), real)[0]
    assert check.top1_count == (19, 20)
    assert check.top5 == pytest.approx(1 - 1 / (5 * 20))  # 4 of 5 shared at one position of 20
    assert "top-5 overlap 99.00%" in check.line()
    two_class = compare_outputs(TASKS["sequence-classification"], inputs, {"logits": ref[:, 0, :2]},
                                {"logits": ref[:, 0, :2]}, thresholds_for("int8"), real)[0]
    assert two_class.top5 is None and two_class.top1 == 1.0


def test_compare_checkpoint_refuses_a_checkpoint_without_the_head(tmp_path):
    """A checkpoint lacking the task's head gives a reference with fresh random weights: no comparison."""
    from mbert_export.export import export_onnx
    from mbert_export.parity import compare_checkpoint

    checkpoint = tmp_path / "mlm-only"
    MODEL_CLASSES["MegatronBertForMaskedLM"](preset_config("tiny")).save_pretrained(checkpoint)
    head = MODEL_CLASSES["MegatronBertForSequenceClassification"].from_pretrained(checkpoint, allow_random_head=True)
    assert "classifier.weight" in head.random_head and "bert.pooler.dense.weight" in head.random_head
    export_onnx(head, "sequence-classification", tmp_path / "cls" / "model.onnx", verify=False)
    with pytest.raises(ValueError, match=r"mlm-only has no weights for the sequence-classification head "
                                         r"\(bert.pooler.dense.weight, .*classifier.bias\).*mbert-export verify ARTIFACT"):
        compare_checkpoint(checkpoint, tmp_path / "cls", samples=2)
