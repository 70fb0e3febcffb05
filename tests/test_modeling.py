"""The reference model equals Hugging Face transformers on the same weights (fp32, <= 1e-5)."""

from __future__ import annotations

import pytest
import torch

from helpers import OUTPUT_NAMES, hf_twin, random_inputs, tiny_config, twin_pair
from mbert_export import modeling
from mbert_export.checkpoints import CheckpointError

TOLERANCE = 1e-5
#: (batch, sequence) pairs: batch 1 and > 1, sequence 1, mid and the maximum (64 in the tiny preset).
SHAPES = [(1, 1), (1, 64), (3, 17), (4, 64), (2, 1)]


def max_diffs(class_name, config, ours, hf_model, batch, seq, seed=0):
    num_choices = 3 if class_name == "MegatronBertForMultipleChoice" else None
    inputs = random_inputs(config, batch, seq, seed=seed, num_choices=num_choices)
    with torch.no_grad():
        mine = ours(**inputs)
        theirs = hf_model(**inputs, return_dict=True)
    assert set(mine) == set(OUTPUT_NAMES[class_name])
    diffs = {}
    for name in OUTPUT_NAMES[class_name]:
        assert mine[name].shape == theirs[name].shape, name
        diffs[name] = (mine[name] - theirs[name]).abs().max().item()
    return diffs


@pytest.mark.parametrize("class_name", [c for c in OUTPUT_NAMES if c != "MegatronBertForCausalLM"])
def test_every_class_matches_transformers(class_name):
    config, ours, hf_model = twin_pair(class_name)
    for seed, (batch, seq) in enumerate(SHAPES):
        for name, diff in max_diffs(class_name, config, ours, hf_model, batch, seq, seed).items():
            assert diff <= TOLERANCE, f"{class_name}.{name} at batch {batch} seq {seq}: {diff:.2e}"


def test_causal_lm_applies_causal_mask_like_transformers():
    config, ours, hf_model = twin_pair("MegatronBertForCausalLM", is_decoder=True)
    hf_model.config.use_cache = False
    for seed, (batch, seq) in enumerate(SHAPES):
        diffs = max_diffs("MegatronBertForCausalLM", config, ours, hf_model, batch, seq, seed)
        assert diffs["logits"] <= TOLERANCE, (batch, seq, diffs)
    # Causality: changing a later token must not change earlier positions' logits.
    inputs = random_inputs(config, 1, 10, padded=False)
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["input_ids"][0, 7] = (changed["input_ids"][0, 7] + 1) % config.vocab_size
    with torch.no_grad():
        a, b = ours(**inputs)["logits"], ours(**changed)["logits"]
    assert torch.allclose(a[0, :7], b[0, :7])
    assert not torch.allclose(a[0, 7:], b[0, 7:])


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "gelu_pytorch_tanh"])
def test_activations_match_transformers(hidden_act):
    config, ours, hf_model = twin_pair("MegatronBertForMaskedLM", hidden_act=hidden_act)
    diffs = max_diffs("MegatronBertForMaskedLM", config, ours, hf_model, 2, 33)
    assert diffs["logits"] <= TOLERANCE


def test_tanh_and_erf_gelu_differ():
    """Guards the test above: the two GELU forms must not be silently the same function."""
    x = torch.linspace(-4, 4, 101)
    exact = modeling.activation("gelu")(x)
    tanh = modeling.activation("gelu_new")(x)
    assert (exact - tanh).abs().max() > 1e-4


def test_mask_value_survives_fp16():
    config = tiny_config()
    mask = torch.tensor([[1, 1, 0, 0]])
    extended = modeling.extended_attention_mask(mask, causal=False, dtype=torch.float16)
    assert torch.isfinite(extended).all()
    model = modeling.MegatronBertForMaskedLM(config).eval().half()
    inputs = random_inputs(config, 2, 64)
    inputs["attention_mask"][1, 1:] = 0
    with torch.no_grad():
        logits = model(**inputs)["logits"]
    assert torch.isfinite(logits).all()


def test_defaults_for_optional_inputs_match_explicit_ones(tiny):
    model = modeling.MegatronBertForPreTraining(tiny).eval()
    inputs = random_inputs(tiny, 2, 9, padded=False)
    with torch.no_grad():
        implicit = model(inputs["input_ids"])
        explicit = model(inputs["input_ids"], torch.ones_like(inputs["input_ids"]),
                         torch.zeros_like(inputs["input_ids"]), torch.arange(9)[None])
    for name in implicit:
        assert torch.equal(implicit[name], explicit[name])


def test_save_and_load_round_trip_and_transformers_loads_it(tmp_path, tiny):
    transformers = pytest.importorskip("transformers")
    model = modeling.MegatronBertForPreTraining(tiny).eval()
    model.save_pretrained(tmp_path)
    again = modeling.MegatronBertForPreTraining.from_pretrained(tmp_path)
    hf_model = transformers.MegatronBertForPreTraining.from_pretrained(tmp_path).eval()
    inputs = random_inputs(tiny, 2, 12)
    with torch.no_grad():
        ref = model(**inputs)
        mine = again(**inputs)
        theirs = hf_model(**inputs)
    for name in ref:
        assert torch.equal(ref[name], mine[name])
        assert (ref[name] - theirs[name]).abs().max() <= TOLERANCE


def test_transformers_saved_folder_loads(tmp_path):
    config = tiny_config()
    torch.manual_seed(1)
    hf_model = hf_twin("MegatronBertForSequenceClassification", config)
    hf_model.save_pretrained(tmp_path)
    ours = modeling.MegatronBertForSequenceClassification.from_pretrained(tmp_path)
    assert ours.config.num_labels == 3
    inputs = random_inputs(config, 2, 12)
    with torch.no_grad():
        diff = (ours(**inputs)["logits"] - hf_model(**inputs)["logits"]).abs().max()
    assert diff <= TOLERANCE


def test_base_checkpoint_loads_into_head_class_and_back(tmp_path, tiny):
    pretraining = modeling.MegatronBertForPreTraining(tiny).eval()
    pretraining.save_pretrained(tmp_path)
    base = modeling.MegatronBertModel.from_pretrained(tmp_path)
    mlm = modeling.MegatronBertForMaskedLM.from_pretrained(tmp_path)
    inputs = random_inputs(tiny, 1, 8)
    with torch.no_grad():
        assert torch.equal(base(**inputs)["pooler_output"], pretraining.bert(**inputs)["pooler_output"])
        assert torch.equal(mlm(**inputs)["logits"], pretraining(**inputs)["prediction_logits"])


def test_missing_head_is_refused_unless_allowed(tmp_path, tiny):
    modeling.MegatronBertForPreTraining(tiny).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights for the MegatronBertForSequenceClassification head"):
        modeling.MegatronBertForSequenceClassification.from_pretrained(tmp_path)
    model = modeling.MegatronBertForSequenceClassification.from_pretrained(tmp_path, allow_random_head=True)
    assert model.classifier.out_features == tiny.num_labels


def test_shape_mismatch_is_a_clear_error(tmp_path, tiny):
    modeling.MegatronBertForMaskedLM(tiny).save_pretrained(tmp_path)
    wrong = tiny_config(hidden_size=64)
    with pytest.raises(CheckpointError, match="weight shapes do not match config.json"):
        modeling.MegatronBertForMaskedLM.from_pretrained(tmp_path, config=wrong)


def test_missing_encoder_weights_is_a_clear_error(tmp_path, tiny):
    model = modeling.MegatronBertForMaskedLM(tiny)
    state = {k: v for k, v in model.state_dict().items() if ".layer.1." not in k}
    fresh = modeling.MegatronBertForMaskedLM(tiny)
    with pytest.raises(CheckpointError, match="encoder weights are missing"):
        fresh.load_reference_state_dict(state)


def test_not_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="is not a folder"):
        modeling.MegatronBertForMaskedLM.from_pretrained(tmp_path / "nope")
