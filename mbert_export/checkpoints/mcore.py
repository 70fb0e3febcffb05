"""The Megatron-Core BERT layout (`megatron.core.models.bert.BertModel`): its name mapping to Hugging Face
names, for both checkpoint formats.

- `torch` format: flat keys `encoder.layers.{i}.<suffix>` per file (each pipeline stage numbers its
  layers from 0), tensor-parallel shards split as in legacy Megatron-LM.
- `torch_dist` format: global tensors; per-layer ones stacked on a leading `num_layers` axis under
  `encoder.layers.<suffix>` (read by `torch_dist.py`).

The pre-LayerNorms appear under the local-spec names (`input_layernorm`, `pre_mlp_layernorm`) or the
TransformerEngine fused names (`linear_qkv.layer_norm_weight`, `linear_fc1.layer_norm_weight`); torch_dist
always stores the fused ones. Without grouped-query attention, `linear_qkv` rows are `[np, 3, hn]`
per shard (megatron/core/transformer/attention.py, `get_query_key_value_tensors`), legacy version 2.0.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .errors import CheckpointError
from .merge import UNTIED_DECODER, Shard

#: QKV layout version (see merge.QKV_LAYOUTS) of Megatron-Core's linear_qkv.
MCORE_QKV_VERSION = 2.0

#: Per-layer suffix -> Hugging Face name inside `bert.encoder.layer.{i}.`
LAYER_NAMES = {
    "input_layernorm.weight": "attention.ln.weight",
    "input_layernorm.bias": "attention.ln.bias",
    "self_attention.linear_qkv.layer_norm_weight": "attention.ln.weight",
    "self_attention.linear_qkv.layer_norm_bias": "attention.ln.bias",
    "self_attention.linear_qkv.weight": "attention.self.qkv.weight",
    "self_attention.linear_qkv.bias": "attention.self.qkv.bias",
    "self_attention.linear_proj.weight": "attention.output.dense.weight",
    "self_attention.linear_proj.bias": "attention.output.dense.bias",
    "pre_mlp_layernorm.weight": "ln.weight",
    "pre_mlp_layernorm.bias": "ln.bias",
    "mlp.linear_fc1.layer_norm_weight": "ln.weight",
    "mlp.linear_fc1.layer_norm_bias": "ln.bias",
    "mlp.linear_fc1.weight": "intermediate.dense.weight",
    "mlp.linear_fc1.bias": "intermediate.dense.bias",
    "mlp.linear_fc2.weight": "output.dense.weight",
    "mlp.linear_fc2.bias": "output.dense.bias",
}

#: Model-level key -> Hugging Face name.
TOP_NAMES = {
    "embedding.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
    "embedding.position_embeddings.weight": "bert.embeddings.position_embeddings.weight",
    "embedding.tokentype_embeddings.weight": "bert.embeddings.token_type_embeddings.weight",
    "encoder.final_layernorm.weight": "bert.encoder.ln.weight",
    "encoder.final_layernorm.bias": "bert.encoder.ln.bias",
    "pooler.dense.weight": "bert.pooler.dense.weight",
    "pooler.dense.bias": "bert.pooler.dense.bias",
    "lm_head.dense.weight": "cls.predictions.transform.dense.weight",
    "lm_head.dense.bias": "cls.predictions.transform.dense.bias",
    "lm_head.layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "lm_head.layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "output_layer.bias": "cls.predictions.bias",
    "output_layer.weight": UNTIED_DECODER,
    "binary_head.weight": "cls.seq_relationship.weight",
    "binary_head.bias": "cls.seq_relationship.bias",
}

_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_HINTS = {"q_layernorm": "QK LayerNorm", "k_layernorm": "QK LayerNorm", "experts": "mixture of experts",
          "router": "mixture of experts", "rotary": "rotary position embeddings"}


def is_mcore(model: Any) -> bool:
    return isinstance(model, Mapping) and any(str(k).startswith(("embedding.", "encoder.layers.", "encoder.final"))
                                              for k in model)


def unknown_error(label: str, unknown: list[str]) -> CheckpointError:
    hint = next((v for k, v in _HINTS.items() if any(k in u for u in unknown)), None)
    return CheckpointError(
        f"{label}: unrecognised tensors {', '.join(unknown[:4])}{' ...' if len(unknown) > 4 else ''}"
        f"{f' ({hint})' if hint else ''}. The model is not the standard Megatron-Core BertModel (pre-LayerNorm, "
        "biased linears, learned positions, GELU MLP); converting it would drop weights")


def mcore_shard(label: str, data: Mapping[str, Any], model: Mapping[str, Any]) -> Shard:
    """The `Shard` of one Megatron-Core `torch`-format file (one tensor-parallel rank of one stage)."""
    shard = Shard(label, data.get("args"), MCORE_QKV_VERSION, kind="mcore")
    unknown = []
    for key, value in model.items():
        if key.endswith("_extra_state"):
            continue
        m = _LAYER_RE.match(key)
        if m and m.group(2) in LAYER_NAMES:
            shard.put(f"bert.encoder.layer.{m.group(1)}.{LAYER_NAMES[m.group(2)]}", value, key)
        elif key in TOP_NAMES:
            shard.put(TOP_NAMES[key], value, key)
        else:
            unknown.append(key)
    if unknown:
        raise unknown_error(label, unknown)
    shard.describe = mcore_name
    return shard


def mcore_name(hf: str, stacked: bool = False) -> str:
    """Megatron-Core name of an expected tensor, for messages about missing ones (torch_dist: `stacked`)."""
    m = re.match(r"bert\.encoder\.layer\.(\d+)\.(.+)$", hf)
    if not m:
        return {v: k for k, v in TOP_NAMES.items()}.get(hf, hf)
    te_names = stacked  # torch_dist always stores the TransformerEngine-style pre-LN names
    suffix = next(k for k, v in LAYER_NAMES.items() if v == m.group(2) and ("layer_norm_" in k) == te_names) \
        if m.group(2).endswith(("ln.weight", "ln.bias")) else next(k for k, v in LAYER_NAMES.items() if v == m.group(2))
    return f"encoder.layers.{suffix}[{m.group(1)}]" if stacked else f"encoder.layers.{m.group(1)}.{suffix}"
