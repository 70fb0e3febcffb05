"""Megatron-Core checkpoints (torch and torch_dist formats, TP x PP) against megatron-core's own outputs.

The fixtures under tests/fixtures/megatron_core/ were written by megatron-core 0.19.2 itself
(`generate.py` there: BertModel with the local layer spec, Megatron-LM's `save_checkpoint`), each with
`oracle.pt`: megatron-core's LM logits, binary logits and final hidden states on fixed inputs. Outputs
are compared where attention_mask == 1 only (megatron-core also masks padded query rows).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from megatron_fixtures import Evil
from mbert_export.checkpoints import CheckpointError, convert_megatron, safe_torch_load
from mbert_export.modeling import MegatronBertForPreTraining

FIXTURES = Path(__file__).parent / "fixtures" / "megatron_core"
LAYOUTS = json.loads((FIXTURES / "VERSIONS.json").read_text())["layouts"]
TOLERANCE = 5e-5


def convert(src, dst, **kwargs):
    messages: list[str] = []
    out = convert_megatron(src, dst, progress=messages.append, **kwargs)
    return out, "\n".join(messages)


def oracle_diffs(folder: Path, oracle: dict) -> dict[str, float]:
    model = MegatronBertForPreTraining.from_pretrained(folder).float().eval()
    inputs = {k: oracle[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    keep = oracle["attention_mask"].bool()
    with torch.no_grad():
        out = model(**inputs)
        hidden = model.bert(**inputs)["last_hidden_state"]
    return {"lm_logits": (out["prediction_logits"] - oracle["lm_logits"])[keep].abs().max().item(),
            "binary_logits": (out["seq_relationship_logits"] - oracle["binary_logits"]).abs().max().item(),
            "hidden_states": (hidden - oracle["hidden_states"])[keep].abs().max().item()}


def fails(src, dst, match, **kwargs) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        convert_megatron(src, dst, **kwargs)
    assert not Path(dst).exists()
    return str(info.value)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_matches_megatron_core_outputs(tmp_path, name):
    layout = LAYOUTS[name]
    src = FIXTURES / name
    out, log = convert(src, tmp_path / "hf")
    diffs = oracle_diffs(out, torch.load(src / "oracle.pt"))
    assert max(diffs.values()) <= TOLERANCE, diffs
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_act"] == ("gelu_new" if layout["bias_gelu_fusion"] else "gelu")
    assert config.get("lm_head_act", config["hidden_act"]) == "gelu"  # megatron-core's LM head: erf GELU
    assert config["vocab_size"] == 128 * layout["tp"]  # Megatron's own padding (make_vocab_size_divisible_by x TP)
    assert config["tie_word_embeddings"] is not layout["untied"]
    source = "megatron-core torch_dist" if layout["format"] == "torch_dist" else "megatron-core torch"
    tp, pp = (1, 1) if layout["format"] == "torch_dist" else (layout["tp"], layout["pp"])
    assert f"{source} checkpoint" in log and f"{tp} tensor-parallel x {pp} pipeline-parallel" in log
    assert ("transformers ignores lm_head_act" in log) == layout["bias_gelu_fusion"]


def test_iteration_folder_and_tanh_control(tmp_path):
    """The iter_XXXXXXX folder itself converts too; a tanh LM head (what one hidden_act would give) is
    measurably off the oracle, so the comparison can tell the two GELUs apart."""
    src = FIXTURES / "torch_dist-tp1-pp1-tanh"
    out, _ = convert(src / "iter_0000001", tmp_path / "hf")
    oracle = torch.load(src / "oracle.pt")
    assert max(oracle_diffs(out, oracle).values()) <= TOLERANCE
    config = json.loads((out / "config.json").read_text())
    config.pop("lm_head_act")
    (out / "config.json").write_text(json.dumps(config))
    assert oracle_diffs(out, oracle)["lm_logits"] > 1e-3


def test_convert_cli(tmp_path, capsys):
    """`mbert-export convert` on a torch_dist folder: progress and the transformers note on stderr."""
    from mbert_export.cli import main as cli_main

    assert cli_main(["convert", str(FIXTURES / "torch_dist-tp2-pp2-tanh"), str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err
    assert "megatron-core torch_dist checkpoint" in err and "transformers ignores lm_head_act" in err
    assert cli_main(["convert", str(FIXTURES / "torch_dist-tp2-pp2-tanh" / "iter_0000001" / "__0_0.distcp"),
                     str(tmp_path / "hf2")]) != 0
    err = capsys.readouterr().err
    assert "one file of a torch_dist checkpoint; pass its folder" in err and "Traceback" not in err


def test_torch_and_torch_dist_give_the_same_weights_layout(tmp_path):
    """torch_dist's stacked, TE-named tensors map to the same HF names as the torch format's per-layer ones."""
    from mbert_export.checkpoints import load_hf_state_dict

    a, _ = convert(FIXTURES / "torch_dist-tp2-pp2-tanh", tmp_path / "a")
    b, _ = convert(FIXTURES / "torch-tp2-pp1-tanh", tmp_path / "b")
    assert load_hf_state_dict(a).keys() == load_hf_state_dict(b).keys()


# ---------------------------------------------------------------------------- refusals
def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


@contextlib.contextmanager
def _stub_modules():
    """Make the inert stubs of Megatron enums importable under their own names while pickling them back."""
    from mbert_export.checkpoints import unpickle

    saved = dict(sys.modules)
    for name, stub in unpickle._stub_cache.items():
        parts = name.split(".")
        for i in range(1, len(parts)):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        setattr(sys.modules[".".join(parts[:-1])], parts[-1], stub)
    try:
        yield
    finally:
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]


def _edit_args(folder: Path, **changes) -> None:
    """Rewrite the args of every torch-format file (the Megatron enums stay inert stubs)."""
    for path in folder.rglob("model_optim_rng.pt"):
        data = safe_torch_load(path)
        for key, value in changes.items():
            setattr(data["args"], key, value)
        with _stub_modules():
            torch.save(data, path.with_suffix(".new"))  # not over the mmap-ed file it was read from
        path.with_suffix(".new").replace(path)


@pytest.mark.parametrize("changes,match", [
    ({"group_query_attention": True, "num_query_groups": 2}, "grouped-query attention"),
    ({"position_embedding_type": "rope"}, "rotary position embeddings"),
    ({"position_embedding_type": "none"}, "no position embeddings"),
    ({"swiglu": True}, "SwiGLU"),
    ({"normalization": "RMSNorm"}, "RMSNorm instead of LayerNorm"),
    ({"add_bias_linear": False}, "without biases .*--disable-bias-linear"),
    ({"kv_channels": 4}, "head size other than hidden_size / heads"),
])
def test_refuses_architectures_hf_cannot_represent(tmp_path, changes, match):
    src = _copy("torch-tp2-pp1-tanh", tmp_path)
    _edit_args(src, **changes)
    fails(src, tmp_path / "hf", match)


def test_refuses_missing_torch_shards_and_undeclared_parallelism(tmp_path):
    src = _copy("torch-tp2-pp2-tanh-untied", tmp_path)
    shutil.rmtree(src / "iter_0000001" / "mp_rank_01_001")
    fails(src, tmp_path / "hf", "shards mp_rank_01_001 are missing .*2 tensor-parallel x 2 pipeline-parallel")
    for stage in ("mp_rank_00_001", "mp_rank_01_000"):
        shutil.rmtree(src / "iter_0000001" / stage)
    fails(src, tmp_path / "hf", "found 1 pipeline stage.* but args.pipeline_model_parallel_size is 2")
    tp = _copy("torch-tp2-pp1-tanh", tmp_path)
    shutil.rmtree(tp / "iter_0000001" / "mp_rank_01")
    fails(tp, tmp_path / "hf", "found 1 tensor-parallel shard.* but args.tensor_model_parallel_size is 2")


def test_refuses_copied_and_swapped_shards(tmp_path):
    """Merged as they are, these give wrong weights without an error (seen: 42 of 78 tensors off by up to 1.85)."""
    copied = _copy("torch-tp2-pp1-tanh", tmp_path)
    shutil.copy(copied / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt", copied / "iter_0000001" / "mp_rank_01")
    fails(copied, tmp_path / "hf", "mp_rank_01/model_optim_rng.pt holds the same word-embedding slice as "
                                   "iter_0000001/mp_rank_00/model_optim_rng.pt")
    staged = _copy("torch-tp2-pp2-tanh-untied", tmp_path)
    it = staged / "iter_0000001"
    shutil.copy(it / "mp_rank_00_000" / "model_optim_rng.pt", it / "mp_rank_01_000")
    fails(staged, tmp_path / "hf", "mp_rank_01_000/model_optim_rng.pt and .*mp_rank_00_000/model_optim_rng.pt were "
                                   "both saved by rank 0")
    swapped = _copy("torch-tp2-pp2-tanh-untied", tmp_path / "swapped")
    it = swapped / "iter_0000001"
    (it / "mp_rank_00_000").rename(it / "moved")
    (it / "mp_rank_01_000").rename(it / "mp_rank_00_000")
    (it / "moved").rename(it / "mp_rank_01_000")
    fails(swapped, tmp_path / "hf", "the mp_rank folders do not hold the shards their names say .*mp_rank_00_000/"
                                    "model_optim_rng.pt: rank 1.*folders were swapped or renamed")


def test_lowercasing_a_cased_vocab_is_warned(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"Tok{i}" for i in range(40)]))
    said: list[str] = []
    convert_megatron(FIXTURES / "torch_dist-tp1-pp1-tanh", tmp_path / "hf", vocab=vocab, lowercase=True,
                     progress=said.append)
    assert any("40 of 40 tokens in vocab.txt have capitals" in m and "--cased" in m for m in said)
    said.clear()
    convert_megatron(FIXTURES / "torch_dist-tp1-pp1-tanh", tmp_path / "hf2", vocab=vocab, lowercase=False,
                     progress=said.append)
    assert not any("have capitals" in m for m in said)


def test_zip_of_two_checkpoints_names_them_and_the_zip(tmp_path):
    import zipfile

    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("torch-tp2-pp1-tanh", "torch_dist-tp1-pp1-erf"):
            for path in (FIXTURES / name).rglob("*"):
                if path.is_file():
                    zf.write(path, f"{name}/{path.relative_to(FIXTURES / name)}")
    message = fails(archive, tmp_path / "hf", r"two.zip \(extracted\) holds several folders \(torch-tp2-pp1-tanh/, "
                                              r"torch_dist-tp1-pp1-erf/\) and no checkpoint of its own")
    assert ".extract-" not in message and not list(tmp_path.glob(".hf*"))


def test_refuses_broken_torch_dist_folders(tmp_path):
    src = _copy("torch_dist-tp2-pp2-tanh", tmp_path)
    it = src / "iter_0000001"
    (it / "__3_0.distcp").rename(tmp_path / "__3_0.distcp")
    fails(src, tmp_path / "hf", r"data file\(s\) __3_0.distcp named in .metadata are missing")
    (tmp_path / "__3_0.distcp").rename(it / "__3_0.distcp")
    data = (it / "__0_0.distcp").read_bytes()
    (it / "__0_0.distcp").write_bytes(data[: len(data) // 2])
    fails(src, tmp_path / "hf", "__0_0.distcp: the file is .* bytes but .metadata places data up to byte .* truncated")
    (it / "__0_0.distcp").write_bytes(data[:100] + bytes(len(data) - 100))  # right size, garbage inside
    fails(src, tmp_path / "hf", "do not match .metadata|corrupt")
    shutil.copy(FIXTURES / "torch_dist-tp1-pp1-tanh" / "iter_0000001" / "__0_0.distcp", it / "__0_0.distcp")
    message = fails(src, tmp_path / "hf", "common_state.* cannot read it as a PyTorch checkpoint .*truncated or corrupt")
    assert "weights_only" not in message  # torch's advice to load unsafely is no advice for a corrupt file
    (it / "__0_0.distcp").write_bytes(data)
    metadata = (it / ".metadata").read_bytes()
    (it / ".metadata").write_bytes(b"hello world\n")  # corrupt, not a refused class
    fails(src, tmp_path / "hf", "cannot read the torch_dist index .*truncated or corrupt")
    (it / ".metadata").write_bytes(metadata)
    shutil.copy(FIXTURES / "torch_dist-tp1-pp1-erf" / "iter_0000001" / ".metadata", it / ".metadata")
    fails(src, tmp_path / "hf", "__1_0.distcp.* not named in .metadata: the index does not match")
    (it / ".metadata").unlink()
    fails(it, tmp_path / "hf", "no mp_rank_XX folders|.metadata is missing")


def test_common_pt_of_older_megatron_core(tmp_path):
    """megatron-core <= 0.18 keeps args & co in iter_XXXXXXX/common.pt beside the *.distcp files: it is read
    from there (and the iter folder is not mistaken for a single-.pt checkpoint)."""
    from mbert_export.checkpoints.torch_dist import DistReader

    src = _copy("torch_dist-tp1-pp1-erf", tmp_path)
    it = src / "iter_0000001"
    common = DistReader(it, False, None).common_state()
    common["args"].layernorm_epsilon = 1e-6  # so that the test can tell where the args came from
    with _stub_modules():
        torch.save(common, it / "common.pt")
    out, _ = convert(it, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["layer_norm_eps"] == 1e-6


def test_refuses_malicious_pickles_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    src = _copy("torch_dist-tp1-pp1-erf", tmp_path)
    it = src / "iter_0000001"
    # megatron-core <= 0.18 keeps the common state in common.pt
    torch.save({"args": None, "payload": Evil(marker)}, it / "common.pt")
    fails(src, tmp_path / "hf", "common.pt: the pickle needs .*not on the allow-list")
    (it / "common.pt").unlink()
    # a hostile .metadata index
    metadata = it / ".metadata"
    good = metadata.read_bytes()
    metadata.write_bytes(__import__("pickle").dumps(Evil(marker)))
    fails(src, tmp_path / "hf", "index pickle needs .*makedirs.*refusing to unpickle")
    metadata.write_bytes(good)
    # >= 0.19: the common state is a byte item inside the .distcp files
    evil = _dist_with_common_state(tmp_path / "evil", src, {"args": None, "payload": Evil(marker)})
    fails(evil, tmp_path / "hf", r"common_state.*the pickle needs .*makedirs.*not on the allow-list")
    assert not marker.exists()


def test_names_missing_tensors(tmp_path):
    """A torch_dist save without some tensors names them as megatron-core calls them."""
    from mbert_export.checkpoints.torch_dist import DistReader

    src = FIXTURES / "torch_dist-tp1-pp1-erf"
    common = DistReader(src / "iter_0000001", False, None).common_state()
    drop = ("encoder.layers.mlp.linear_fc1.layer_norm_bias", "lm_head.dense.bias")
    with _stub_modules():
        dst = _dist_with_common_state(tmp_path / "ckpt", src, common, drop=drop)
    fails(dst, tmp_path / "hf", r"encoder.layers.mlp.linear_fc1.layer_norm_bias\[0\].*lm_head.dense.bias")
    # optimizer state (megatron-core keys start with "optimizer.") is skipped; unknown model tensors are not
    fc1 = torch.zeros(4, 96, 32)
    with _stub_modules():
        optim = {"optimizer.state.exp_avg.encoder.layers.mlp.linear_fc1.weight": fc1}
        with_optim = _dist_with_common_state(tmp_path / "optim", src, common, extra=optim)
        unknown = _dist_with_common_state(tmp_path / "unknown", src, common,
                                          extra={"encoder.layers.self_attention.q_layernorm.weight": fc1})
    out, _ = convert(with_optim, tmp_path / "hf-optim")
    assert max(oracle_diffs(out, torch.load(src / "oracle.pt")).values()) <= TOLERANCE
    fails(unknown, tmp_path / "hf", r"unrecognised tensors .*q_layernorm.* \(QK LayerNorm\)")
    fails(FIXTURES / "torch-tp2-pp1-tanh" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt", tmp_path / "hf",
          "found 1 tensor-parallel shard")


def _dist_with_common_state(dst: Path, src: Path, common: dict, drop: tuple = (), extra: dict | None = None) -> Path:
    """A torch_dist folder with the tensors of `src` (less `drop`) and `common` as its common_state byte item."""
    from torch.distributed.checkpoint import DefaultSavePlanner, FileSystemWriter, save

    from mbert_export.checkpoints.torch_dist import DistReader

    reader = DistReader(src / "iter_0000001", False, None)
    state: dict = {k: reader.tensor(k) for k, md in reader.keys().items()
                   if hasattr(md, "size") and "/" not in k and k not in drop}
    state.update(extra or {})
    state["common_state"] = [common]  # megatron-core 0.19: a ShardedObject of global shape (1,)
    dst.mkdir(parents=True)
    with pytest.warns(UserWarning):
        save(state, storage_writer=FileSystemWriter(str(dst)), planner=DefaultSavePlanner(flatten_state_dict=False),
             no_dist=True)
    return dst


def test_onnx_graph_reproduces_megatron_core_lm_logits(tmp_path):
    """The exported MLM graph keeps the erf LM head beside the tanh MLP: ONNX Runtime matches the oracle."""
    ort = pytest.importorskip("onnxruntime")
    from mbert_export.export import export_onnx, load_model_for_task

    src = FIXTURES / "torch-tp2-pp2-tanh-untied"
    oracle = torch.load(src / "oracle.pt")
    model = load_model_for_task(src, "mlm")  # converts the Megatron-Core folder on the way
    assert model.config.hidden_act == "gelu_new" and model.config.lm_head_act == "gelu"
    path = tmp_path / "mlm.onnx"
    export_onnx(model, "mlm", path, verify=False)  # verified against the oracle below
    feed = {k: oracle[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")}
    logits = torch.from_numpy(ort.InferenceSession(str(path)).run(["logits"], feed)[0])
    keep = oracle["attention_mask"].bool()
    assert (logits - oracle["lm_logits"])[keep].abs().max().item() <= TOLERANCE
