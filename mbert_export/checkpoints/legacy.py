"""The legacy Megatron-LM BERT layout (`model.language_model.{embedding,encoder,pooler}`, `lm_head`,
`binary_head`): its name mapping to Hugging Face names. The fused QKV order depends on
`checkpoint_version` (see `merge.QKV_LAYOUTS`)."""

from __future__ import annotations

import re
from typing import Any, Mapping

from .errors import CheckpointError
from .merge import Shard

_LAYER_RE = re.compile(
    r"^layers\.(\d+)\.(input_layernorm|post_attention_layernorm|(?:self_)?attention\.query_key_value|"
    r"(?:self_)?attention\.dense|mlp\.dense_h_to_4h|mlp\.dense_4h_to_h)\.(weight|bias)$")
_LAYER_OPS = {
    "input_layernorm": "attention.ln", "post_attention_layernorm": "ln",
    "attention.query_key_value": "attention.self.qkv", "self_attention.query_key_value": "attention.self.qkv",
    "attention.dense": "attention.output.dense", "self_attention.dense": "attention.output.dense",
    "mlp.dense_h_to_4h": "intermediate.dense", "mlp.dense_4h_to_h": "output.dense",
}
_HEADS = [("pooler", "language_model.pooler", {"dense.weight": "bert.pooler.dense.weight",
                                               "dense.bias": "bert.pooler.dense.bias"}),
          ("lm_head", "lm_head", {"dense.weight": "cls.predictions.transform.dense.weight",
                                  "dense.bias": "cls.predictions.transform.dense.bias",
                                  "layernorm.weight": "cls.predictions.transform.LayerNorm.weight",
                                  "layernorm.bias": "cls.predictions.transform.LayerNorm.bias",
                                  "bias": "cls.predictions.bias"}),
          ("binary_head", "binary_head", {"weight": "cls.seq_relationship.weight",
                                          "bias": "cls.seq_relationship.bias"})]


def is_legacy(model: Any) -> bool:
    return isinstance(model, Mapping) and "language_model" in model


def legacy_shard(label: str, data: Mapping[str, Any], model: Mapping[str, Any]) -> Shard:
    """The `Shard` of one legacy Megatron-LM checkpoint file (`model` is its `model` entry)."""
    shard = Shard(label, data.get("args"), data.get("checkpoint_version", 0), "checkpoint_version" in data)
    lm = model["language_model"]
    emb = lm.get("embedding", {})
    for sub, hf in (("word_embeddings", "bert.embeddings.word_embeddings.weight"),
                    ("position_embeddings", "bert.embeddings.position_embeddings.weight"),
                    ("tokentype_embeddings", "bert.embeddings.token_type_embeddings.weight")):
        value = emb.get(sub, {}).get("weight") if isinstance(emb.get(sub), Mapping) else emb.get(f"{sub}.weight")
        shard.put(hf, value, f"language_model.embedding.{sub}.weight")
    encoder = "encoder" if "encoder" in lm else "transformer"
    attention = "attention"
    unknown = []
    for key, value in lm.get(encoder, {}).items():
        if key.endswith("_extra_state"):
            continue
        where = f"language_model.{encoder}.{key}"
        m = _LAYER_RE.match(key)
        if m:
            if m.group(2).startswith("self_attention"):
                attention = "self_attention"
            shard.put(f"bert.encoder.layer.{m.group(1)}.{_LAYER_OPS[m.group(2)]}.{m.group(3)}", value, where)
        elif key in ("final_layernorm.weight", "final_layernorm.bias"):
            shard.put(f"bert.encoder.ln.{key.rsplit('.', 1)[1]}", value, where)
        else:
            unknown.append(where)
    if unknown:
        raise CheckpointError(
            f"{label}: unrecognised tensors {', '.join(unknown[:4])}{' ...' if len(unknown) > 4 else ''}. The "
            "model is not the standard Megatron-LM BERT (pre-LayerNorm, biased linears, learned positions); "
            "converting it would drop weights")
    for key, prefix, names in _HEADS:
        group = lm.get(key) if key == "pooler" else model.get(key)
        if isinstance(group, Mapping):
            for sub, hf in names.items():
                shard.put(hf, group.get(sub), f"{prefix}.{sub}")
    shard.describe = lambda hf: _legacy_name(hf, encoder, attention)
    return shard


def _legacy_name(hf: str, encoder: str, attention: str) -> str:
    """Megatron-LM path of an expected layer tensor, for messages about missing ones."""
    m = re.match(r"bert\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", hf)
    if not m:
        return hf
    op = {v: k for k, v in _LAYER_OPS.items() if not k.startswith(("self_attention", "attention"))}
    op.update({"attention.self.qkv": f"{attention}.query_key_value", "attention.output.dense": f"{attention}.dense"})
    return f"language_model.{encoder}.layers.{m.group(1)}.{op[m.group(2)]}.{m.group(3)}"
