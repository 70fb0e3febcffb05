"""The committed demo model (models/megatron-bert-demo): loads here and in transformers, same logits
and token ids, and its held-out masked-LM accuracy shows real learning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mbert_export import calibration as cal  # noqa: E402
from mbert_export.config import MegatronBertConfig  # noqa: E402
from mbert_export.modeling import MegatronBertForMaskedLM  # noqa: E402
from mbert_export.tokenization import Tokenizer  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "models" / "megatron-bert-demo"


@pytest.fixture(scope="module")
def folder() -> Path:
    if not (DEMO / "model.safetensors").is_file():
        pytest.fail(f"{DEMO} is missing; run scripts/train_demo_model.py")
    return DEMO


@pytest.fixture(scope="module")
def model(folder):
    torch.manual_seed(0)
    return MegatronBertForMaskedLM.from_pretrained(folder)


@pytest.fixture(scope="module")
def tokenizer(folder):
    return Tokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def sample(tokenizer):
    """A small fixed held-out sample: 48 rows of 128 tokens, BERT-masked, seed 0."""
    return cal.masked_lm_examples(tokenizer, num_samples=48, seq_len=128, batch_size=16, seed=0)


def _inputs(batch):
    return {k: torch.from_numpy(np.ascontiguousarray(batch[k])) for k in cal.MODEL_INPUTS}


def test_files_config_and_fp32_weights(folder, model, tokenizer):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                 "special_tokens_map.json", "README.md"):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").stat().st_size <= 15 * 1024 * 1024
    config = MegatronBertConfig.from_pretrained(folder)
    assert config.tokenizer_vocab_size == tokenizer.vocab_size < config.vocab_size  # padded like Megatron-LM
    assert config.vocab_size % 128 == 0
    assert config.max_position_embeddings == tokenizer.model_max_length
    assert config.pad_token_id == tokenizer.pad_token_id == 0
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), framework="np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


def test_transformers_gives_the_same_logits(folder, model, tokenizer):
    transformers = pytest.importorskip("transformers")
    hf = transformers.MegatronBertForMaskedLM.from_pretrained(folder).eval()
    passages = cal.load_passages("heldout")[:6]
    batch = tokenizer(passages[:3], passages[3:], truncation=True, max_length=96)
    with torch.no_grad():
        ours = model(**_inputs(batch))["logits"]
        theirs = hf(**_inputs(batch)).logits
    real = batch["attention_mask"].astype(bool)
    assert ours.shape == theirs.shape == (3, batch["input_ids"].shape[1], model.config.vocab_size)
    assert float((ours - theirs).abs()[torch.from_numpy(real)].max()) <= 1e-5


def test_transformers_tokenizer_gives_the_same_ids(folder, tokenizer):
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    texts = cal.load_passages("heldout")[:40] + ["Ünïcödé naïve café — “quotes” 景太郎 ½", "[MASK] is a [SEP] token."]
    for text in texts:
        assert auto(text)["input_ids"] == tokenizer.encode(text, truncation=True), text
    ours = tokenizer(texts[:4], texts[4:8], truncation=True, max_length=64)
    theirs = auto(texts[:4], texts[4:8], truncation=True, max_length=64, padding=True, return_tensors="np")
    for key in cal.MODEL_INPUTS:
        assert (ours[key] == theirs[key]).all(), key


def test_heldout_mlm_accuracy_beats_the_baseline(model, tokenizer, sample):
    def logits_fn(inputs):
        with torch.no_grad():
            return model(**_inputs(inputs))["logits"].numpy()

    accuracy = cal.mlm_accuracy(logits_fn, sample, tokenizer.vocab_size)
    _, baseline = cal.most_frequent_token_baseline(sample)
    assert baseline < 0.12
    assert accuracy > baseline + 0.1 and accuracy > 3 * baseline, (accuracy, baseline)


def test_padded_vocab_rows_are_never_the_top_logit(model, tokenizer, sample):
    with torch.no_grad():
        logits = model(**_inputs(sample[0]))["logits"]
    assert int(logits.argmax(-1).max()) < tokenizer.vocab_size


def test_model_card_reports_training_and_accuracy(folder):
    card = (folder / "README.md").read_text(encoding="utf-8")
    for words in ("python3.11-doc", "held-out", "baseline", "seed", "training time", "MegatronBertForMaskedLM"):
        assert words.lower() in card.lower(), words
    summary = json.loads((folder / "training_summary.json").read_text(encoding="utf-8"))
    assert summary["eval"][0]["accuracy"] > summary["eval"][0]["baseline_accuracy"] + 0.1
