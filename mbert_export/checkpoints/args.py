"""Hyper-parameters from the pickled training args of a Megatron checkpoint, checked against the tensors:
sizes, LayerNorm eps, the GELU of the MLP and of the LM head, and the features Hugging Face MegatronBERT
cannot represent (refused)."""

from __future__ import annotations

from typing import Any

from .errors import CheckpointError, Progress, say
from .merge import Shard
from .unpickle import PickledStub


def arg(args: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(args, name, None) if args is not None else None
        if value is not None:
            return value
    return default


def activations(args: Any, kind: str) -> tuple[str, str, str]:
    """Hugging Face activations of the encoder MLP and of the LM-head transform, and the reason.

    MLP: Megatron's fused bias-GELU kernel (`bias_gelu_fusion`, Megatron-LM's default) and `--openai-gelu`
    use the tanh approximation (`gelu_new`); otherwise exact erf GELU (`gelu`). LM head: Megatron-Core's
    `BertLMHead` always applies `torch.nn.functional.gelu` (erf); legacy Megatron-LM's does too unless
    `--openai-gelu`. Checkpoints without args predate these flags: tanh for both, as trained then.
    """
    if args is None:
        return "gelu_new", "gelu_new", "no args in the checkpoint: assuming Megatron-LM's tanh GELU (gelu_new)"
    openai = bool(arg(args, "openai_gelu"))
    if arg(args, "bias_gelu_fusion", "bias_activation_fusion"):
        mlp, why = "gelu_new", "MLP: args.bias_gelu_fusion: tanh GELU (gelu_new)"
    elif openai:
        mlp, why = "gelu_new", "MLP: args.openai_gelu: tanh GELU (gelu_new)"
    elif not hasattr(args, "openai_gelu") and not hasattr(args, "bias_gelu_fusion"):
        mlp, why = "gelu_new", "MLP: args predate --openai-gelu: assuming tanh GELU (gelu_new)"
    else:
        mlp, why = "gelu", "MLP: unfused GELU in args: exact erf GELU (gelu)"
    head = "gelu_new" if openai and kind == "legacy" else "gelu"
    return mlp, head, f"{why}; LM head: {'tanh (openai_gelu)' if head != 'gelu' else 'exact erf GELU (gelu)'}"


def check_supported(args: Any, label: str) -> None:
    """Refuse architectures that HF MegatronBERT cannot represent, instead of converting them wrongly."""
    if args is None:
        return
    problems = []
    for flag, feature in (("swiglu", "a gated SwiGLU MLP"), ("gated_linear_unit", "a gated linear unit MLP"),
                          ("squared_relu", "squared-ReLU MLP"), ("qk_layernorm", "QK LayerNorm"),
                          ("apply_residual_connection_post_layernorm", "post-LayerNorm residuals"),
                          ("group_query_attention", "grouped-query attention"),
                          ("num_experts", "mixture of experts")):
        if arg(args, flag):
            problems.append(f"{feature} ({flag}={getattr(args, flag)!r})")
    if arg(args, "glu_activation"):
        problems.append(f"a gated MLP (glu_activation={args.glu_activation!r})")
    if arg(args, "normalization", default="LayerNorm") != "LayerNorm":
        problems.append(f"{args.normalization} instead of LayerNorm (normalization={args.normalization!r})")
    pe = arg(args, "position_embedding_type")
    if isinstance(pe, str) and pe != "learned_absolute" or isinstance(pe, PickledStub) and not (
            set(pe.args) <= {2, "learned_absolute", "absolute"}):  # Megatron-DeepSpeed: absolute = 2
        feature = "rotary position embeddings" if "rope" in str(pe) else \
            "no position embeddings" if "none" in str(pe) else "non-learned position embeddings"
        problems.append(f"{feature} (position_embedding_type={pe!r})")
    kv, heads, hidden = arg(args, "kv_channels"), arg(args, "num_attention_heads"), arg(args, "hidden_size")
    if kv and heads and hidden and int(kv) * int(heads) != int(hidden):
        problems.append(f"a head size other than hidden_size / heads (kv_channels={kv})")
    if arg(args, "add_bias_linear") is False:
        problems.append("linear layers without biases (add_bias_linear=False, --disable-bias-linear)")
    if problems:
        raise CheckpointError(f"{label}: the checkpoint was trained with {'; '.join(problems)}, which Hugging Face "
                              "MegatronBERT (pre-LN BERT with biases, GELU MLP, LayerNorm, learned absolute "
                              "positions, full multi-head attention) cannot represent; only checkpoints of that "
                              "architecture can be converted")


def build_config(shards: list[Shard], layers: int, tp: int, heads: int | None,
                  progress: Progress) -> dict[str, Any]:
    """Model sizes from the pickled args when present, checked against (or inferred from) tensor shapes."""
    s0, args = shards[0], shards[0].args
    t = s0.tensors
    rows = sum(s.tensors["bert.embeddings.word_embeddings.weight"].shape[0] for s in shards)
    hidden = t["bert.embeddings.word_embeddings.weight"].shape[1]
    ffn_key = "bert.encoder.layer.0.intermediate.dense.weight"
    ffn = sum(s.tensors[ffn_key].shape[0] for s in shards) if layers else 4 * hidden
    positions = t["bert.embeddings.position_embeddings.weight"].shape[0]
    tt = t.get("bert.embeddings.token_type_embeddings.weight")
    checks = [("hidden_size", ("hidden_size",), hidden, "columns of the word embeddings"),
              ("num_hidden_layers", ("num_layers",), layers, "layers found"),
              ("intermediate_size", ("ffn_hidden_size",), ffn, "rows of mlp.dense_h_to_4h over all shards"),
              ("max_position_embeddings", ("max_position_embeddings",), positions, "rows of the position embeddings"),
              ("vocab_size", ("padded_vocab_size",), rows, "rows of the word embeddings over all shards")]
    for _, names, actual, what in checks:
        declared = arg(args, *names)
        if declared is not None and int(declared) != int(actual):
            raise CheckpointError(
                f"{s0.label}: config/weight shape mismatch: args.{names[0]}={declared} but the checkpoint has "
                f"{actual} {what}. The args do not belong to these weights (or shards of different runs were mixed)")
    declared_heads = arg(args, "num_attention_heads")
    if heads is not None and declared_heads is not None and int(heads) != int(declared_heads):
        raise CheckpointError(f"{s0.label}: num_attention_heads={heads} was given but args.num_attention_heads is "
                              f"{declared_heads}; drop the override")
    heads = heads or declared_heads
    if heads is None:
        heads = max(1, hidden // 64)
        say(progress, f"no num_attention_heads in args: assuming head size 64 ({heads} heads); pass "
                       "num_attention_heads if that is wrong")
    heads = int(heads)
    if hidden % heads or heads % tp:
        raise CheckpointError(f"{s0.label}: num_attention_heads={heads} must divide hidden_size={hidden} and be a "
                              f"multiple of the tensor-parallel size {tp}; pass the right num_attention_heads")
    act, head_act, why = activations(args, s0.kind)
    say(progress, f"activation: {why}")
    eps = arg(args, "layernorm_epsilon", "norm_epsilon", default=1e-5)
    return dict(vocab_size=int(rows), hidden_size=int(hidden), num_hidden_layers=int(layers),
                num_attention_heads=heads, intermediate_size=int(ffn), hidden_act=act,
                max_position_embeddings=int(positions), type_vocab_size=int(tt.shape[0]) if tt is not None else 2,
                layer_norm_eps=float(eps), **({"lm_head_act": head_act} if head_act != act else {}))
