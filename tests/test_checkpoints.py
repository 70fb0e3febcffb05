"""checkpoints: Megatron-LM -> Hugging Face conversion, HF folder loading/saving, safe unpickling.

Megatron-LM checkpoints are synthesised from a reference model (tests/megatron_fixtures.py), so a
converted folder must reproduce the reference outputs exactly (<= 1e-5) for every checkpoint_version,
tensor-parallel size and on-disk layout. Every bad input must raise a clear error and leave no output.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from megatron_fixtures import (TOKENIZER_VOCAB, Evil, fake_megatron_enums, make_args, reference_model,
                               reference_state_dict, to_megatron, to_pipeline, write_checkpoint, write_pipeline)
from mbert_export.checkpoints import (CheckpointError, convert_megatron, load_hf_state_dict, safe_torch_load,
                                      save_hf_state_dict)
from mbert_export.modeling import MegatronBertForPreTraining

TOLERANCE = 1e-5
OUTPUTS = ("prediction_logits", "seq_relationship_logits")


@pytest.fixture(scope="module")
def ref():
    """What a Megatron-LM checkpoint with args computes: tanh GELU in the MLP (bias-gelu fusion), exact erf
    GELU in the LM head (legacy `BertLMHead` uses torch.nn.functional.gelu unless --openai-gelu)."""
    return reference_model(seed=0)


@pytest.fixture(scope="module")
def ref_tanh():
    """The same weights with tanh GELU everywhere: checkpoints without args, and what transformers runs."""
    return reference_model(seed=0, lm_head_act=None)


@pytest.fixture(scope="module")
def ref_state(ref):
    return reference_state_dict(ref)


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 16), generator=gen)
    types = torch.randint(0, 2, (2, 16), generator=gen)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 11:] = 0
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def max_diff(model, ref, inputs) -> float:
    with torch.no_grad():
        got, want = model(**inputs), ref(**inputs)
    return max((got[k] - want[k]).abs().max().item() for k in OUTPUTS)


def convert(src, dst, **kwargs):
    messages: list[str] = []
    out = convert_megatron(src, dst, progress=messages.append, **kwargs)
    return out, "\n".join(messages)


def fails(src, dst, match, **kwargs) -> str:
    """Conversion must fail with CheckpointError matching `match` and leave nothing at `dst`."""
    with pytest.raises(CheckpointError, match=match) as info:
        convert_megatron(src, dst, **kwargs)
    assert not Path(dst).exists()
    parent = Path(dst).parent
    assert not parent.exists() or not [p for p in parent.iterdir() if p.name.startswith(f".{Path(dst).name}.")]
    return str(info.value)


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("layout", ["zip", "release", "iteration"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("version", [0, 1.0, 2.0, 3.0])
def test_roundtrip_every_version_tp_and_layout(tmp_path, ref, ref_state, inputs, version, tp, layout):
    src = write_checkpoint(to_megatron(ref_state, ref.config, version=version, tp=tp), tmp_path / "in", layout)
    out, log = convert(src, tmp_path / "hf")
    model = MegatronBertForPreTraining.from_pretrained(out)
    assert max_diff(model, ref, inputs) <= TOLERANCE
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MegatronBertForPreTraining"]
    assert config["model_type"] == "megatron-bert"
    assert config["layer_norm_eps"] == 1e-5 and config["hidden_act"] == "gelu_new" and config["lm_head_act"] == "gelu"
    assert config["vocab_size"] == 128 and config["num_attention_heads"] == 4
    assert f"{tp} tensor-parallel x 1 pipeline-parallel shard(s)" in log
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp dirs cleaned up


@pytest.mark.parametrize("version,tp", [(3.0, 1), (2.0, 2)])
def test_legacy_pipeline_parallel(tmp_path, ref, ref_state, inputs, version, tp):
    """Legacy Megatron-LM PP stages (layers renumbered from 0 per stage, the last stage's copy of the word
    embeddings) join into the same model; a missing stage is named."""
    grid = to_pipeline(to_megatron(ref_state, ref.config, version=version, tp=tp), pp=2)
    src = write_pipeline(grid, tmp_path / "in")
    out, log = convert(src, tmp_path / "hf")
    assert f"{tp} tensor-parallel x 2 pipeline-parallel shard(s)" in log
    assert max_diff(MegatronBertForPreTraining.from_pretrained(out), ref, inputs) <= TOLERANCE
    for t in range(tp):
        shutil.rmtree(src / "iter_0000100" / f"mp_rank_{t:02d}_001")
    fails(src, tmp_path / "hf2", "found 1 pipeline stage.* but args.pipeline_model_parallel_size is 2")


def test_copied_tensor_parallel_shard_is_refused(tmp_path, ref, ref_state):
    """A legacy shard copied over another (no args.rank to tell): caught by content, not merged into wrong weights."""
    src = write_checkpoint(to_megatron(ref_state, ref.config, version=3.0, tp=2), tmp_path / "in", "iteration")
    files = sorted(src.rglob("model_optim_rng.pt"))
    assert len(files) == 2
    shutil.copy(files[0], files[1])
    with pytest.raises(CheckpointError, match="holds the same word-embedding slice as"):
        convert_megatron(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_wrong_qkv_layout_is_detected_by_the_comparison(tmp_path, ref, ref_state, inputs):
    """Control: a [np, hn, 3] (1.0) checkpoint labelled 2.0 must give different logits."""
    shards = to_megatron(ref_state, ref.config, version=1.0, tp=2)
    for shard in shards:
        shard["checkpoint_version"] = 2.0
    out, _ = convert(write_checkpoint(shards, tmp_path / "in", "release"), tmp_path / "hf")
    assert max_diff(MegatronBertForPreTraining.from_pretrained(out), ref, inputs) > 1e-2


@pytest.mark.parametrize("layout,tp", [("zip_top", 1), ("zip_bare", 1), ("ranks", 2), ("file", 1)])
def test_other_layouts(tmp_path, ref, ref_state, inputs, layout, tp):
    src = write_checkpoint(to_megatron(ref_state, ref.config, version=3.0, tp=tp), tmp_path / "in", layout)
    out, _ = convert(src, tmp_path / "hf")
    assert max_diff(MegatronBertForPreTraining.from_pretrained(out), ref, inputs) <= TOLERANCE


def test_transformers_loads_the_converted_folder(tmp_path, ref, ref_tanh, ref_state, inputs):
    """transformers ignores lm_head_act: it runs the LM head with hidden_act (tanh), as convert says."""
    transformers = pytest.importorskip("transformers")
    src = write_checkpoint(to_megatron(ref_state, ref.config, version=2.0, tp=2), tmp_path / "in", "zip")
    out, log = convert(src, tmp_path / "hf")
    hf = transformers.MegatronBertForPreTraining.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got, want, exact = hf(**inputs, return_dict=True), ref_tanh(**inputs), ref(**inputs)
    for name in OUTPUTS:
        assert (got[name] - want[name]).abs().max().item() <= TOLERANCE, name
    approx = (got["prediction_logits"] - exact["prediction_logits"]).abs().max().item()
    assert approx > 1e-4
    assert "transformers ignores lm_head_act='gelu'" in log
    said = float(re.search(r"max \|LM logit difference\| ([0-9.e+-]+) measured", log).group(1))
    assert 0.1 * approx < said < 10 * approx  # the same order as what transformers actually does here


def test_no_args_no_version_legacy_pickle(tmp_path, ref_tanh, ref_state, inputs):
    """2019-style checkpoint: no checkpoint_version (-> 0), no args, old torch pickle format (no mmap)."""
    shards = to_megatron(ref_state, ref_tanh.config, version=None, tp=2, args=False)
    src = write_checkpoint(shards, tmp_path / "in", "release", legacy=True)
    out, log = convert(src, tmp_path / "hf", num_attention_heads=4)
    assert "treating it as 0" in log and "no args" in log
    assert max_diff(MegatronBertForPreTraining.from_pretrained(out), ref_tanh, inputs) <= TOLERANCE
    # Without args and without the override the head count is guessed (head size 64) and said so.
    single = write_checkpoint(to_megatron(ref_state, ref_tanh.config, version=None, args=False), tmp_path / "one",
                              "file")
    _, log = convert(single, tmp_path / "hf2")
    assert "assuming head size 64 (1 heads)" in log
    fails(src, tmp_path / "hf3", "num_attention_heads=1 must divide .* tensor-parallel size 2")


def test_erf_gelu_eps_and_fp16_from_args(tmp_path):
    """Unfused GELU in args -> exact `gelu`; eps from args; fp16 weights stay fp16 in the file."""
    ref = reference_model(seed=3, hidden_act="gelu", layer_norm_eps=1e-6)
    state = reference_state_dict(ref)
    shards = to_megatron(state, ref.config, version=3.0, tp=2, dtype=torch.float16)
    out, _ = convert(write_checkpoint(shards, tmp_path / "in", "iteration"), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_act"] == "gelu" and config["layer_norm_eps"] == 1e-6
    loaded = load_hf_state_dict(out)
    assert {t.dtype for t in loaded.values()} == {torch.float16}
    rounded = reference_model(seed=3, hidden_act="gelu", layer_norm_eps=1e-6)
    rounded.load_reference_state_dict({k: v.half().float() for k, v in state.items()})
    gen = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, 128, (2, 9), generator=gen)}
    assert max_diff(MegatronBertForPreTraining.from_pretrained(out), rounded, inputs) <= TOLERANCE


def test_megatron_enum_in_args_loads_without_megatron(tmp_path, ref, ref_state, inputs):
    with fake_megatron_enums() as PositionEmbeddingType:
        args = make_args(ref.config, 3.0, 1, position_embedding_type=PositionEmbeddingType.absolute)
        src = write_checkpoint(to_megatron(ref_state, ref.config, tp=1, args=args), tmp_path / "in", "file")
    data = safe_torch_load(src)
    assert "megatron.model.enums.PositionEmbeddingType" in repr(data["args"].position_embedding_type)
    out, _ = convert(src, tmp_path / "hf")
    assert max_diff(MegatronBertForPreTraining.from_pretrained(out), ref, inputs) <= TOLERANCE


def test_without_heads_gives_encoder_only_model(tmp_path, ref, ref_state, inputs):
    src = write_checkpoint(to_megatron(ref_state, ref.config, heads=False), tmp_path / "in", "file")
    out, _ = convert(src, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MegatronBertModel"]
    assert not any(k.startswith(("cls.", "bert.pooler")) for k in load_hf_state_dict(out))


def test_vocab_writes_tokenizer_and_records_its_size(tmp_path, ref, ref_state):
    pytest.importorskip("tokenizers")
    vocab = tmp_path / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab.write_text("\n".join(specials + [f"tok{i}" for i in range(TOKENIZER_VOCAB - 5)]) + "\n")
    src = write_checkpoint(to_megatron(ref_state, ref.config, tp=2), tmp_path / "in", "zip")
    out, log = convert(src, tmp_path / "hf", vocab=vocab)  # lowercase inferred from args.tokenizer_type
    assert "lower-casing" in log
    config = json.loads((out / "config.json").read_text())
    assert config["tokenizer_vocab_size"] == TOKENIZER_VOCAB and config["vocab_size"] == 128
    assert (out / "vocab.txt").is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True
    # A vocab with more tokens than embedding rows belongs to another model.
    vocab.write_text("\n".join(specials + [f"tok{i}" for i in range(200)]) + "\n")
    msg = fails(src, tmp_path / "hf2", "has 205 tokens but the checkpoint's embedding has only 128 rows", vocab=vocab)
    assert "vocab.txt" in msg


def test_existing_output_needs_overwrite(tmp_path, ref, ref_state):
    src = write_checkpoint(to_megatron(ref_state, ref.config), tmp_path / "in", "file")
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_megatron(src, dst)
    assert (dst / "keep.txt").exists()
    convert_megatron(src, dst, overwrite=True)
    assert (dst / "model.safetensors").exists() and not (dst / "keep.txt").exists()
    with pytest.raises(ValueError, match="holds .* which this reads from: writing there would destroy it"):
        convert_megatron(src, tmp_path, overwrite=True)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for overwrite in (False, True):  # said before the checkpoint is read, the same with --overwrite
        with pytest.raises(FileExistsError, match="a-file is a file, not a folder"):
            convert_megatron(src, a_file, overwrite=overwrite)
    with pytest.raises(CheckpointError, match="nope.txt: vocab file not found"):
        convert_megatron(src, tmp_path / "hf2", vocab=tmp_path / "nope.txt")


# ---------------------------------------------------------------------------- bad Megatron inputs
def test_missing_source(tmp_path):
    fails(tmp_path / "nope.zip", tmp_path / "hf", "nope.zip: not found")


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_checkpoint_file(tmp_path, ref, ref_state, legacy):
    src = write_checkpoint(to_megatron(ref_state, ref.config), tmp_path / "in", "file", legacy=legacy)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    fails(src, tmp_path / "hf", "model_optim_rng.pt: cannot read it as a PyTorch checkpoint .* truncated or corrupt")
    src.write_bytes(b"")
    fails(src, tmp_path / "hf", "the file is empty")


def test_truncated_zip(tmp_path, ref, ref_state):
    src = write_checkpoint(to_megatron(ref_state, ref.config), tmp_path / "in", "zip")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 2 // 3])
    fails(src, tmp_path / "hf", r"\.zip: cannot read the zip .*truncated or corrupt")


def test_zip_without_checkpoint(tmp_path):
    src = tmp_path / "megatron_bert_345m_v0_1_cased.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("README.txt", "hello")
        zf.writestr("vocab.txt", "[PAD]\n")
    msg = fails(src, tmp_path / "hf", "no Megatron-LM checkpoint inside")
    assert "README.txt" in msg and "release/mp_rank_00/model_optim_rng.pt" in msg


@pytest.mark.parametrize("member", ["../evil.pt", "/tmp/evil_abs.pt", "release/../../evil.pt", "C:/evil.pt"])
def test_zip_member_outside_is_refused(tmp_path, member):
    src = tmp_path / "sub" / "ckpt.zip"
    src.parent.mkdir()
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("release/mp_rank_00/model_optim_rng.pt", b"x")
        zf.writestr(member, b"payload")
    msg = fails(src, tmp_path / "sub" / "hf", "unsafe member paths")
    assert member in msg
    assert not (tmp_path / "evil.pt").exists() and not Path("/tmp/evil_abs.pt").exists()


def test_unknown_checkpoint_version(tmp_path, ref, ref_state):
    src = write_checkpoint(to_megatron(ref_state, ref.config, version=7.0), tmp_path / "in", "release")
    fails(src, tmp_path / "new" / "dir" / "hf", r"unknown checkpoint_version 7\.0; supported: 0, 1\.0, 2\.0, 3\.0")
    assert not (tmp_path / "new").exists()  # folders created for dst are removed again


def test_missing_tensors_are_named(tmp_path, ref, ref_state):
    shards = to_megatron(ref_state, ref.config, version=3.0, tp=2)
    del shards[1]["model"]["language_model"]["encoder"]["layers.1.mlp.dense_4h_to_h.weight"]
    del shards[0]["model"]["lm_head"]["bias"]
    src = write_checkpoint(shards, tmp_path / "in", "release")
    msg = fails(src, tmp_path / "hf", "2 tensors are missing")
    assert "language_model.encoder.layers.1.mlp.dense_4h_to_h.weight (in release/mp_rank_01" in msg
    assert "lm_head.bias (in release/mp_rank_00" in msg


@pytest.mark.parametrize("field,value,match", [
    ("hidden_size", 64, "args.hidden_size=64 but the checkpoint has 32 columns"),
    ("num_layers", 3, "args.num_layers=3 but the checkpoint has layers 0..1"),
    ("padded_vocab_size", 256, "args.padded_vocab_size=256 but the checkpoint has 128 rows"),
    ("ffn_hidden_size", 128, "args.ffn_hidden_size=128"),
    ("num_attention_heads", 5, "num_attention_heads=5 must divide hidden_size=32"),
])
def test_config_weight_shape_mismatch(tmp_path, ref, ref_state, field, value, match):
    args = make_args(ref.config, 3.0, 2, **{field: value})
    src = write_checkpoint(to_megatron(ref_state, ref.config, tp=2, args=args), tmp_path / "in", "release")
    fails(src, tmp_path / "hf", match)


def test_shard_count_must_match_args(tmp_path, ref, ref_state):
    args = make_args(ref.config, 3.0, 4)
    src = write_checkpoint(to_megatron(ref_state, ref.config, tp=2, args=args), tmp_path / "in", "release")
    fails(src, tmp_path / "hf", r"found 2 tensor-parallel shard\(s\) but args.tensor_model_parallel_size is 4")
    # One shard of a TP-2 checkpoint passed alone.
    src = write_checkpoint(to_megatron(ref_state, ref.config, tp=2), tmp_path / "in2", "release")
    fails(src / "release" / "mp_rank_01" / "model_optim_rng.pt", tmp_path / "hf", "found 1 tensor-parallel shard")
    # A missing rank folder.
    for file in (src / "release" / "mp_rank_01").iterdir():
        file.unlink()
    (src / "release" / "mp_rank_01").rmdir()
    (src / "release" / "mp_rank_00").rename(src / "release" / "mp_rank_02")
    fails(src, tmp_path / "hf", "mp_rank_00, mp_rank_01 are missing")


def test_untrusted_pickle_is_refused_unless_opted_in(tmp_path, ref, ref_state, inputs):
    marker = tmp_path / "code_ran"
    shards = to_megatron(ref_state, ref.config, extra={"payload": Evil(marker)})
    src = write_checkpoint(shards, tmp_path / "in", "release")
    msg = fails(src, tmp_path / "hf", "needs os.makedirs")
    assert "allow_unsafe_pickle=True" in msg and "--trust-remote-pickle" in msg
    assert not marker.exists()
    out, log = convert(src, tmp_path / "hf", allow_unsafe_pickle=True)
    assert marker.exists() and "arbitrary code execution" in log
    assert max_diff(MegatronBertForPreTraining.from_pretrained(out), ref, inputs) <= TOLERANCE


def test_unsupported_layouts(tmp_path, ref, ref_state):
    pp = tmp_path / "pp" / "release" / "mp_rank_00_000"
    pp.mkdir(parents=True)
    fails(tmp_path / "pp", tmp_path / "hf", "mp_rank_00_000/model_optim_rng.pt: missing")
    mcore = {"model": {"embedding.word_embeddings.weight": torch.zeros(4, 4)}, "checkpoint_version": 3.0}
    torch.save(mcore, tmp_path / "mcore.pt")
    fails(tmp_path / "mcore.pt", tmp_path / "hf", "tensors are missing: embedding.position_embeddings.weight")
    gpt = {"model": {"decoder.layers.0.mlp.linear_fc1.weight": torch.zeros(4, 4)}, "checkpoint_version": 3.0}
    torch.save(gpt, tmp_path / "gpt.pt")
    fails(tmp_path / "gpt.pt", tmp_path / "hf", "not a Megatron BERT checkpoint .*decoder.layers")
    shards = to_megatron(ref_state, ref.config)
    shards[0]["model"]["language_model"]["encoder"]["layers.0.self_attention.rotary.inv_freq"] = torch.ones(2)
    fails(write_checkpoint(shards, tmp_path / "in", "file"), tmp_path / "hf", "unrecognised tensors .*rotary")
    args = make_args(ref.config, 3.0, 1, swiglu=True)
    src = write_checkpoint(to_megatron(ref_state, ref.config, args=args), tmp_path / "in2", "file")
    fails(src, tmp_path / "hf", "swiglu=True")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", tmp_path / "hf", "no Megatron checkpoint found")


# ---------------------------------------------------------------------------- HF folders
def test_save_and_load_safetensors(tmp_path):
    base = torch.randn(6, 4)
    state = {"a": base, "tied": base, "t": base.t(), "half": torch.randn(3).half(), "bf": torch.randn(2, 2).bfloat16(),
             "view": base[1:3], "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}
    path = save_hf_state_dict(state, tmp_path)
    assert path == tmp_path / "model.safetensors"
    loaded = load_hf_state_dict(tmp_path)
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:  # the library reads our streamed file
        assert f.metadata()["format"] == "pt"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    with pytest.raises(CheckpointError, match="not a tensor"):
        save_hf_state_dict({"x": 1.0}, tmp_path / "bad")


def test_model_save_pretrained_round_trip(tmp_path, ref, inputs):
    ref.save_pretrained(tmp_path)
    assert max_diff(MegatronBertForPreTraining.from_pretrained(tmp_path), ref, inputs) == 0.0


def _shard_folder(tmp_path, state, kind):
    from safetensors.torch import save_file

    names = sorted(state)
    halves = {f"model-0000{i + 1}-of-00002.{kind}": names[i::2] for i in range(2)}
    for file, keys in halves.items():
        part = {k: state[k].clone() for k in keys}
        save_file(part, tmp_path / file) if kind == "safetensors" else torch.save(part, tmp_path / file)
    index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    weight_map = {k: f for f, keys in halves.items() for k in keys}
    (tmp_path / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tmp_path / index


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_sharded_folders(tmp_path, ref_state, kind):
    index = _shard_folder(tmp_path, ref_state, kind)
    loaded = load_hf_state_dict(tmp_path)
    assert set(loaded) == set(ref_state) and all(torch.equal(loaded[k], v) for k, v in ref_state.items())
    (tmp_path / f"model-00002-of-00002.{kind}").unlink()
    with pytest.raises(CheckpointError, match=f"names shard 'model-00002-of-00002.{kind}', which is missing"):
        load_hf_state_dict(tmp_path)
    index.write_text(json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside its folder"):
        load_hf_state_dict(tmp_path)


def test_pytorch_model_bin(tmp_path, ref_state):
    torch.save(ref_state, tmp_path / "pytorch_model.bin")
    loaded = load_hf_state_dict(tmp_path)
    assert all(torch.equal(loaded[k], v) for k, v in ref_state.items())
    torch.save({"w": torch.ones(1), "evil": Evil(tmp_path / "ran")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="needs os.makedirs"):
        load_hf_state_dict(tmp_path)
    assert not (tmp_path / "ran").exists()


def test_bad_hf_folders(tmp_path):
    with pytest.raises(CheckpointError, match="folder not found"):
        load_hf_state_dict(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="has no weights: expected model.safetensors"):
        load_hf_state_dict(tmp_path)
    save_hf_state_dict({"w": torch.randn(64, 64)}, tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors file .*truncated"):
        load_hf_state_dict(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_hf_state_dict(tmp_path)
