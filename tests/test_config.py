"""MegatronBertConfig against transformers' config.json, presets, bad configs; the convert CLI."""

from __future__ import annotations

import json

import pytest
import torch

from mbert_export import modeling
from mbert_export.cli import main as cli_main
from mbert_export.config import PRESETS, ConfigError, MegatronBertConfig, preset_config


def test_transformers_config_json_round_trips(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.MegatronBertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=128, hidden_act="gelu_new", layer_norm_eps=1e-5,
                                         id2label={0: "NEG", 1: "POS", 2: "NEU"}, is_decoder=True)
    hf.save_pretrained(tmp_path)
    ours = MegatronBertConfig.from_pretrained(tmp_path)
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "hidden_act", "layer_norm_eps", "is_decoder", "max_position_embeddings", "type_vocab_size",
                  "pad_token_id"):
        assert getattr(ours, field) == getattr(hf, field), field
    assert ours.id2label == {0: "NEG", 1: "POS", 2: "NEU"} and ours.num_labels == 3
    assert "transformers_version" in ours.extra  # unknown keys are kept ...
    out = tmp_path / "again"
    ours.save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["transformers_version"] == ours.extra["transformers_version"]
    again = transformers.MegatronBertConfig.from_pretrained(out)  # ... and transformers reads what we write
    assert again.id2label == hf.id2label and again.hidden_act == "gelu_new" and again.is_decoder


def test_num_labels_without_label_names():
    config = MegatronBertConfig.from_dict({**PRESETS["tiny"], "num_labels": 4})
    assert config.id2label == {i: f"LABEL_{i}" for i in range(4)} and config.label2id["LABEL_3"] == 3


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_describe_models_of_the_right_size(name):
    config = preset_config(name)
    expected = {"tiny": (0.0, 0.1), "megatron-bert-345m-cased": (330, 345), "megatron-bert-345m-uncased": (330, 345),
                "erlangshen-megatronbert-1.3b": (1200, 1350), "erlangshen-megatronbert-3.9b": (3800, 4000)}[name]
    millions = config.num_parameters() / 1e6
    assert expected[0] <= millions <= expected[1], millions
    if name == "tiny":  # the formula equals the real module's count
        assert config.num_parameters() == sum(p.numel() for p in modeling.MegatronBertForPreTraining(config).parameters())


def test_345m_presets_keep_the_padded_vocabulary():
    assert (preset_config("megatron-bert-345m-cased").vocab_size,
            preset_config("megatron-bert-345m-cased").real_vocab_size) == (29056, 28996)
    assert preset_config("megatron-bert-345m-uncased").real_vocab_size == 30522


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 30}, "not a multiple of num_attention_heads"),
    ({"hidden_act": "mish"}, "hidden_act 'mish' is not supported"),
    ({"position_embedding_type": "relative_key"}, "not supported"),
    ({"tokenizer_vocab_size": 500}, "larger than vocab_size"),
    ({"model_type": "bert"}, "not 'megatron-bert'"),
    ({"num_hidden_layers": 0}, "must be a positive integer"),
])
def test_bad_configs_are_refused_with_the_field_named(change, message):
    with pytest.raises(ConfigError, match=message):
        MegatronBertConfig.from_dict({**PRESETS["tiny"], **change})


def test_truncated_config_json(tmp_path):
    (tmp_path / "config.json").write_text('{"vocab_size": 12')
    with pytest.raises(ConfigError, match="not valid JSON"):
        MegatronBertConfig.from_pretrained(tmp_path)


def test_convert_cli_end_to_end(tmp_path, capsys):
    """`mbert-export convert` on a synthetic Megatron-LM zip gives a folder equal to the source model."""
    from megatron_fixtures import reference_model, reference_state_dict, to_megatron, write_checkpoint

    source = reference_model()
    shards = to_megatron(reference_state_dict(source), source.config, version=3.0, tp=2)
    zip_path = write_checkpoint(shards, tmp_path / "ckpt", "zip")
    out = tmp_path / "hf"
    assert cli_main(["convert", str(zip_path), str(out)]) == 0
    converted = modeling.MegatronBertForPreTraining.from_pretrained(out)
    ids = torch.randint(1, 100, (2, 9))
    with torch.no_grad():
        diff = (converted(ids)["prediction_logits"] - source(ids)["prediction_logits"]).abs().max()
    assert diff <= 1e-5
    assert cli_main(["convert", str(zip_path), str(out)]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_lm_head_act_round_trip_and_validation(tmp_path):
    """`lm_head_act` (Megatron's erf LM head beside a tanh MLP) survives config.json; None is not written."""
    config = preset_config("tiny", hidden_act="gelu_new", lm_head_act="gelu")
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["lm_head_act"] == "gelu"
    assert MegatronBertConfig.from_pretrained(tmp_path).lm_head_act == "gelu"
    assert "lm_head_act" not in preset_config("tiny").to_dict()
    with pytest.raises(ConfigError, match="lm_head_act 'swiglu' is not supported"):
        preset_config("tiny", lm_head_act="swiglu")
