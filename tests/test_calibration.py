"""Calibration corpus and batches: splits, shapes, masks, caching, [UNK] checks, BERT masking, scoring."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mbert_export import calibration as cal
from mbert_export.tokenization import Tokenizer

REPO = Path(__file__).resolve().parent.parent
ENGLISH = ["The len() function returns the number of items in a container.",
           "If the file does not exist, an exception is raised and nothing is written."]
FOREIGN = ["Быстрая коричневая лиса перепрыгивает через ленивую собаку, и никто этого не видит.",
           "敏捷的棕色狐狸跳过了懒狗。这是一个用于测试的中文句子。",
           "Съешь же ещё этих мягких французских булок да выпей чаю."]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    """A small lowercase WordPiece vocabulary trained on part of the train split (under a second)."""
    from tokenizers import Tokenizer as Backend, models, normalizers, pre_tokenizers, trainers

    backend = Backend(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=1000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                        limit_alphabet=100, show_progress=False)
    backend.train_from_iterator(cal.load_passages("train")[:4000], trainer)
    vocab = backend.get_vocab()
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    return Tokenizer.from_vocab(path, True, model_max_length=512)


# ---------------------------------------------------------------------------- corpus
def test_splits_are_disjoint_and_heldout_is_small():
    train, heldout = cal.load_passages("train"), cal.load_passages("heldout")
    assert len(train) > 20000 and len(heldout) > 1000
    assert not set(train) & set(heldout)
    assert 0.05 <= len(heldout) / (len(train) + len(heldout)) <= 0.10
    for passage in heldout[:500] + train[:500]:
        assert "\n" not in passage and "<p" not in passage and not passage.startswith(">>>")
        assert len(passage.split()) >= 8


def test_split_rule_matches_the_extraction_script():
    spec = importlib.util.spec_from_file_location("extract_corpus", REPO / "calibration" / "extract_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert all(module.is_heldout(p) for p in cal.load_passages("heldout")[:300])
    assert not any(module.is_heldout(p) for p in cal.load_passages("train")[:300])


def test_unknown_split_and_missing_corpus(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        cal.load_passages("test")
    monkeypatch.setenv("MBERT_EXPORT_CORPUS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="MBERT_EXPORT_CORPUS_DIR"):
        cal.load_passages("train")


def test_load_text_file_lines_paragraphs_and_errors(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("\ufefffirst line\n  second   line \n", encoding="utf-8")
    assert cal.load_text_file(lines) == ["first line", "second line"]
    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text("one\nparagraph\n\nanother\r\nparagraph\n", encoding="utf-8")
    assert cal.load_text_file(paragraphs) == ["one paragraph", "another paragraph"]
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        cal.load_text_file(latin1)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no text"):
        cal.load_text_file(empty)


def test_module_does_not_import_torch():
    code = "import sys, mbert_export.calibration; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ---------------------------------------------------------------------------- calibration batches
def _check_batch(batch, tokenizer):
    for name in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"):
        assert batch[name].dtype == np.int64 and batch[name].shape == batch["input_ids"].shape
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    lengths = mask.sum(1)
    for r, n in enumerate(lengths):
        assert (mask[r, :n] == 1).all() and (mask[r, n:] == 0).all()  # right padding
        assert (ids[r, n:] == tokenizer.pad_token_id).all() and (types[r, n:] == 0).all()
        assert ids[r, 0] == tokenizer.cls_token_id and ids[r, n - 1] == tokenizer.sep_token_id
        first_sep = int(np.flatnonzero(ids[r] == tokenizer.sep_token_id)[0])
        assert (types[r, :first_sep + 1] == 0).all() and (types[r, first_sep + 1:n] == 1).all()
        assert tokenizer.pad_token_id not in ids[r, :n]


def test_batches_have_varied_lengths_int64_and_consistent_masks(tokenizer):
    batches = cal.calibration_batches(tokenizer, num_samples=64, batch_size=8, use_cache=False)
    assert sum(len(b["input_ids"]) for b in batches) == 64
    assert [b["input_ids"].shape[1] for b in batches] == [32, 64, 128, 256] * 2
    for batch in batches:
        _check_batch(batch, tokenizer)
    lengths = np.concatenate([b["attention_mask"].sum(1) for b in batches])
    assert len(set(lengths.tolist())) > 10                       # rows end at passage boundaries
    assert any((b["attention_mask"] == 0).any() for b in batches)  # so masks carry padding
    assert any((b["token_type_ids"] == 1).any() for b in batches)  # and some rows are pairs
    last = cal.calibration_batches(tokenizer, num_samples=10, batch_size=4, seq_lengths=(48,), use_cache=False)
    assert [len(b["input_ids"]) for b in last] == [4, 4, 2]


def test_batches_are_deterministic_and_seeded(tokenizer):
    a = cal.calibration_batches(tokenizer, num_samples=16, use_cache=False)
    b = cal.calibration_batches(tokenizer, num_samples=16, use_cache=False)
    c = cal.calibration_batches(tokenizer, num_samples=16, seed=1, use_cache=False)
    assert all((x["input_ids"] == y["input_ids"]).all() for x, y in zip(a, b))
    assert not all((x["input_ids"] == y["input_ids"]).all() for x, y in zip(a, c))


def test_cache_round_trips(tokenizer, tmp_path, monkeypatch):
    first = cal.calibration_batches(tokenizer, num_samples=24, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("calib-*.npz"))
    assert len(files) == 1

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cache not used")

    monkeypatch.setattr(cal, "PassagePacker", no_rebuild)
    second = cal.calibration_batches(tokenizer, num_samples=24, cache_dir=tmp_path)
    assert len(first) == len(second)
    for x, y in zip(first, second):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype and (x[key] == y[key]).all()
    monkeypatch.undo()
    cal.calibration_batches(tokenizer, num_samples=24, seq_lengths=(32, 64), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("calib-*.npz"))) == 2  # another parameter, another file
    files[0].write_bytes(b"not an npz")  # a corrupt cache file is rebuilt, not fatal
    again = cal.calibration_batches(tokenizer, num_samples=24, cache_dir=tmp_path)
    assert (again[0]["input_ids"] == first[0]["input_ids"]).all()


def test_user_passages_and_bad_lengths(tokenizer):
    batches = cal.calibration_batches(tokenizer, passages=ENGLISH * 5, num_samples=6, batch_size=3,
                                      seq_lengths=(16, 24), use_cache=False)
    assert [b["input_ids"].shape for b in batches] == [(3, 16), (3, 24)]
    with pytest.raises(ValueError, match="outside"):
        cal.calibration_batches(tokenizer, seq_lengths=(4096,), use_cache=False)
    with pytest.raises(ValueError, match="no text"):
        cal.calibration_batches(tokenizer, passages=["", "  "], use_cache=False)


def test_unk_ratio_flags_foreign_text(tokenizer):
    assert cal.unk_ratio(tokenizer, cal.load_passages("heldout")[:200]) < 0.01
    assert cal.unk_ratio(tokenizer, ENGLISH) == 0.0
    assert cal.unk_ratio(tokenizer, FOREIGN) > 0.5
    with pytest.raises(ValueError, match=r"\d+\.\d% \[UNK\]"):
        cal.calibration_batches(tokenizer, passages=FOREIGN, num_samples=4, seq_lengths=(32,), use_cache=False)
    with pytest.warns(cal.CalibrationTextWarning, match=r"\[UNK\]"):
        cal.calibration_batches(tokenizer, passages=FOREIGN, num_samples=4, seq_lengths=(32,),
                                use_cache=False, on_unk="warn")
    assert cal.check_unk_ratio(0.9, max_ratio=None) == 0.9
    assert cal.check_unk_ratio(0.1) == 0.1


# ---------------------------------------------------------------------------- masked LM examples
def test_masked_lm_examples_bert_masking(tokenizer):
    batches = cal.masked_lm_examples(tokenizer, num_samples=96, seq_len=128, batch_size=32)
    again = cal.masked_lm_examples(tokenizer, num_samples=96, seq_len=128, batch_size=32)
    for x, y in zip(batches, again):
        assert (x["input_ids"] == y["input_ids"]).all() and (x["labels"] == y["labels"]).all()
    labelled = ordinary = masked = kept = 0
    for b in batches:
        _check_batch({**b, "input_ids": np.where(b["labels"] >= 0, b["labels"], b["input_ids"])}, tokenizer)
        assert b["labels"].dtype == np.int64
        scored = b["labels"] != cal.IGNORE_INDEX
        regular = (b["special_tokens_mask"] == 0) & (b["attention_mask"] == 1)
        assert not (scored & ~regular).any()                           # never special or padding
        assert not np.isin(b["labels"][scored], tokenizer.all_special_ids).any()
        assert (b["input_ids"][~scored & regular] != tokenizer.mask_token_id).all()
        labelled += int(scored.sum())
        ordinary += int(regular.sum())
        masked += int((b["input_ids"][scored] == tokenizer.mask_token_id).sum())
        kept += int((b["input_ids"][scored] == b["labels"][scored]).sum())
    assert 0.14 <= labelled / ordinary <= 0.16
    assert 0.75 <= masked / labelled <= 0.85
    assert 0.06 <= kept / labelled <= 0.15  # 10% kept, plus random picks of the same token


def test_heldout_examples_come_from_heldout_text(tokenizer):
    batch = cal.masked_lm_examples(tokenizer, num_samples=4, seq_len=64, pair_prob=0.0)[0]
    original = np.where(batch["labels"] >= 0, batch["labels"], batch["input_ids"])
    start = original[0, 1:9].tolist()  # the first row starts at the beginning of a passage
    prefixes = {tuple(e.ids[:8]) for e in tokenizer.backend.encode_batch(cal.load_passages("heldout"),
                                                                         add_special_tokens=False)}
    assert tuple(start) in prefixes


# ---------------------------------------------------------------------------- scoring helpers
def _batch(labels):
    labels = np.asarray(labels, dtype=np.int64)
    return {"input_ids": np.zeros_like(labels), "attention_mask": np.ones_like(labels),
            "token_type_ids": np.zeros_like(labels), "labels": labels}


def test_mlm_accuracy_excludes_padded_vocab_rows():
    batches = [_batch([[-100, 3, 7, -100]]), _batch([[5, -100, -100, 2]])]
    answers = iter([np.array([[0, 3, 7, 0]]), np.array([[5, 0, 0, 1]])])

    def logits_fn(inputs):
        assert set(inputs) == set(cal.MODEL_INPUTS)
        logits = np.zeros((*inputs["input_ids"].shape, 12), dtype=np.float32)
        np.put_along_axis(logits, next(answers)[..., None], 5.0, axis=-1)
        logits[..., 10] = 9.0  # a padded vocab row, larger than every real logit
        return logits

    assert cal.mlm_accuracy(logits_fn, batches, real_vocab_size=10) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no labelled"):
        cal.mlm_accuracy(lambda x: np.zeros((1, 4, 12)), [_batch([[-100] * 4])], 10)


def test_top1_agreement_and_baseline():
    a = np.zeros((1, 3, 6)); a[0, [0, 1, 2], [1, 2, 3]] = 1
    b = a.copy(); b[0, 2] = 0; b[0, 2, 5] = 2  # position 2 disagrees (5 is a padded row)
    assert cal.top1_agreement(a, a) == 1.0
    assert cal.top1_agreement(a, b) == pytest.approx(2 / 3)
    assert cal.top1_agreement(a, b, real_vocab_size=5) == pytest.approx(2 / 3)
    assert cal.top1_agreement(a, b, mask=[[1, 1, 0]]) == 1.0
    with pytest.raises(ValueError, match="mask shape"):
        cal.top1_agreement(a, b, mask=[[1, 1]])
    token, accuracy = cal.most_frequent_token_baseline([_batch([[4, 4, -100, 9]]), _batch([[4, 1, -100, -100]])])
    assert token == 4 and accuracy == pytest.approx(0.6)


def test_short_evaluation_text_warns(tokenizer):
    with pytest.warns(cal.CalibrationTextWarning, match="too short"):
        cal.masked_lm_examples(tokenizer, passages=ENGLISH, num_samples=8, seq_len=32)


def test_very_short_sequence_lengths(tokenizer):
    batches = cal.calibration_batches(tokenizer, num_samples=6, batch_size=2, seq_lengths=(2, 3, 4), use_cache=False)
    assert [b["input_ids"].shape for b in batches] == [(2, 2), (2, 3), (2, 4)]
    for batch in batches:
        _check_batch(batch, tokenizer)
    assert (batches[0]["input_ids"] == [tokenizer.cls_token_id, tokenizer.sep_token_id]).all()
    with pytest.raises(ValueError, match="outside 2"):
        cal.calibration_batches(tokenizer, seq_lengths=(1,), use_cache=False)
