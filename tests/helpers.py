"""Test helpers: tiny configs, random inputs, and the Hugging Face oracle on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mbert_export.config import preset_config  # noqa: E402
from mbert_export.modeling import MODEL_CLASSES  # noqa: E402

#: The nine classes and the Hugging Face output fields each returns.
OUTPUT_NAMES = {
    "MegatronBertModel": ("last_hidden_state", "pooler_output"),
    "MegatronBertForPreTraining": ("prediction_logits", "seq_relationship_logits"),
    "MegatronBertForMaskedLM": ("logits",),
    "MegatronBertForCausalLM": ("logits",),
    "MegatronBertForNextSentencePrediction": ("logits",),
    "MegatronBertForSequenceClassification": ("logits",),
    "MegatronBertForMultipleChoice": ("logits",),
    "MegatronBertForTokenClassification": ("logits",),
    "MegatronBertForQuestionAnswering": ("start_logits", "end_logits"),
}


def tiny_config(num_labels: int = 3, **overrides):
    """The `tiny` preset (2 layers, hidden 32, 4 heads, 128-row vocab, 64 positions), 3 labels."""
    config = preset_config("tiny", **overrides)
    config.num_labels = num_labels
    return config


def random_inputs(config, batch: int, seq: int, seed: int = 0, num_choices: int | None = None,
                  padded: bool = True) -> dict[str, "torch.Tensor"]:
    """Random ids and token types; when `padded`, rows after the first end early (right padding)."""
    rng = np.random.default_rng(seed)
    shape = (batch, num_choices, seq) if num_choices else (batch, seq)
    ids = rng.integers(1, config.vocab_size, size=shape)
    mask = np.ones(shape, dtype=np.int64)
    types = np.zeros(shape, dtype=np.int64)
    flat_ids, flat_mask, flat_types = ids.reshape(-1, seq), mask.reshape(-1, seq), types.reshape(-1, seq)
    for row in range(flat_ids.shape[0]):
        length = seq if (row == 0 or not padded) else int(rng.integers(1, seq + 1))
        flat_mask[row, length:] = 0
        flat_ids[row, length:] = config.pad_token_id
        split = int(rng.integers(0, length + 1))
        flat_types[row, split:length] = 1
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "token_type_ids": torch.from_numpy(types),
    }


def hf_twin(class_name: str, config):
    """The transformers implementation of `class_name` with `config` (the test oracle)."""
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.MegatronBertConfig(
        **{k: v for k, v in config.to_dict().items()
           if k not in ("tokenizer_vocab_size", "architectures", "model_type")})
    model = getattr(transformers, class_name)(hf_config)
    return model.eval()


def twin_pair(class_name: str, **config_overrides):
    """Our model and the transformers model carrying identical random weights."""
    if class_name == "MegatronBertForQuestionAnswering":
        config_overrides["num_labels"] = 2  # transformers sizes qa_outputs by num_labels
    config = tiny_config(**config_overrides)
    torch.manual_seed(0)
    hf_model = hf_twin(class_name, config)
    ours = MODEL_CLASSES[class_name](config).eval()
    ours.load_reference_state_dict(hf_model.state_dict(), source="transformers")
    return config, ours, hf_model
