"""`convert_megatron`: a Megatron checkpoint (legacy Megatron-LM or Megatron-Core, `torch` or
`torch_dist` format, any tensor x pipeline parallelism) -> a Hugging Face MegatronBERT folder.

Reads the files (`layout`), maps each layout's names (`legacy`, `mcore`, `torch_dist`), joins pipeline
stages and merges tensor-parallel shards lazily (`merge`), takes the hyper-parameters from the training
args (`args`), and streams the result into `model.safetensors` (`hf`) inside a folder renamed into place only
when complete.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..fileio import atomic_dir, check_output_dir, make_writable_dir
from .args import arg, build_config, check_supported
from .errors import CheckpointError, Progress, say
from .hf import SAFE_WEIGHTS_NAME, write_safetensors
from .layout import DistFolder, Grid, extract_zip, find_checkpoint, is_torch_archive
from .legacy import is_legacy, legacy_shard
from .mcore import is_mcore, mcore_shard
from .merge import (BINARY, LM_HEAD, POOLER, QKV_LAYOUTS, UNTIED_DECODER, Shard, check_shapes, join_stages,
                    label_of, layer_keys, materialise, merge_plan)
from .torch_dist import dist_shard
from .unpickle import safe_torch_load

#: Padded embedding rows of the NVIDIA NGC BERT-345M checkpoints -> the size of their tokenizers.
NGC_VOCAB_SIZES = {29056: 28996, 30592: 30522}

# ============================================================================ Megatron-LM: config
def _read_file(path: Path, label: str, allow_unsafe_pickle: bool, progress: Progress) -> Shard:
    """One `torch`-format file (legacy Megatron-LM or Megatron-Core) as a `Shard`."""
    data = safe_torch_load(path, allow_unsafe_pickle=allow_unsafe_pickle, progress=progress)
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{label}: holds a {type(data).__name__}, not a Megatron checkpoint dict")
    model = data.get("model")
    if model is None and "model0" in data:
        raise CheckpointError(f"{label}: virtual-pipeline checkpoints (model0, model1, ...) are not supported; "
                              "re-save without --num-layers-per-virtual-pipeline-stage (or as torch_dist)")
    if model is None and "module" in data:  # DeepSpeed-style wrapper of the same structure
        model = data["module"]
    if is_legacy(model):
        return legacy_shard(label, data, model)
    if is_mcore(model):
        return mcore_shard(label, data, model)
    keys = ", ".join(list(model)[:4]) if isinstance(model, Mapping) else type(model).__name__
    raise CheckpointError(
        f"{label}: not a Megatron BERT checkpoint (model holds {keys}). Expected the legacy Megatron-LM layout "
        "(model.language_model.embedding / encoder ...) or Megatron-Core's BertModel (embedding.*, encoder.layers.*)")


def _check_shard_places(parts: list[list[Shard]]) -> None:
    """Refuse shard files that are copies of one another or sit in each other's mp_rank folders: merged as
    they are, they give a model with wrong weights and no error.

    The global rank that saved each file (args.rank) grows with the tensor-parallel rank fastest and the
    pipeline stage slowest in every Megatron rank order ("tp-cp-ep-dp-pp", "tp-pp-dp"). Files without a
    rank, or with one rank in all (re-sharding tools save every shard with the same args), are compared
    by content: two tensor-parallel ranks never hold the same slice of the word embeddings.
    """
    tp, pp = len(parts), len(parts[0])
    if tp * pp == 1:
        return
    where = {(t, p): parts[t][p] for t in range(tp) for p in range(pp)}
    ranks = {key: arg(part.args, "rank") for key, part in where.items()}
    if all(isinstance(r, int) for r in ranks.values()) and len(set(ranks.values())) > 1:
        in_order = [(ranks[t, p], where[t, p].label) for p in range(pp) for t in range(tp)]
        seen: dict[int, str] = {}
        for rank, label in in_order:
            if rank in seen:
                raise CheckpointError(f"{label} and {seen[rank]} were both saved by rank {rank}: one is a copy of the "
                                      "other; copy every mp_rank folder again from the training run")
            seen[rank] = label
        if [r for r, _ in in_order] != sorted(r for r, _ in in_order):
            found = ", ".join(f"{label}: rank {rank}" for rank, label in in_order)
            raise CheckpointError(f"the mp_rank folders do not hold the shards their names say ({found}; ranks grow "
                                  "with the tensor-parallel rank, then the stage): folders were swapped or renamed")
        return  # every file saved by its own rank, in its place: no copy is possible, nothing to load
    name = "bert.embeddings.word_embeddings.weight"
    for p in range(pp):
        slices = [(parts[t][p].label, parts[t][p].tensors.get(name)) for t in range(tp)]
        loaded = [(label, materialise(value)) for label, value in slices if value is not None]
        for i in range(1, len(loaded)):
            if loaded[i][1].shape == loaded[0][1].shape and torch.equal(loaded[i][1], loaded[0][1]):
                raise CheckpointError(f"{loaded[i][0]} holds the same word-embedding slice as {loaded[0][0]}: one "
                                      "tensor-parallel shard is a copy of another; copy every mp_rank folder again")


def _read_grid(grid: Grid, src: Path, allow_unsafe_pickle: bool, progress: Progress) -> list[Shard]:
    """One `Shard` per tensor-parallel rank, its pipeline stages joined."""
    tp, pp = len(grid.files), len(grid.files[0])
    shards, grid_parts = [], []
    for t, stages in enumerate(grid.files):
        parts = []
        for p, path in enumerate(stages):
            label = label_of(path, src)
            say(progress, f"reading {label} ({t * pp + p + 1}/{tp * pp})")
            parts.append(_read_file(path, label, allow_unsafe_pickle, progress))
        kinds = {s.kind for s in parts}
        if len(kinds) > 1:
            raise CheckpointError(f"{parts[0].label}: the pipeline stages mix legacy Megatron-LM and Megatron-Core "
                                  "files; they come from different checkpoints")
        grid_parts.append(parts)
    _check_shard_places(grid_parts)
    shards = [join_stages(parts) for parts in grid_parts]
    declared = arg(shards[0].args, "pipeline_model_parallel_size")
    if declared is not None and int(declared) != pp:
        raise CheckpointError(
            f"{shards[0].label}: found {pp} pipeline stage(s) but args.pipeline_model_parallel_size is {declared}; "
            + (f"pass the folder holding every mp_rank_XX_YYY stage folder (000..{int(declared) - 1:03d})"
               if pp < int(declared) else "the folder mixes shards of different checkpoints"))
    return shards


def _validate(shards: list[Shard], progress: Progress,
              parallel_on_disk: bool = True) -> tuple[float, int, list[str]]:
    """Check version, shard count and completeness; returns (checkpoint_version, layers, optional keys)."""
    s0, n = shards[0], len(shards)
    versions = {float(s.version) for s in shards}
    if len(versions) > 1:
        raise CheckpointError(f"shards disagree on checkpoint_version ({sorted(versions)}); they come from "
                              "different checkpoints")
    version = float(s0.version)
    if version not in QKV_LAYOUTS:
        raise CheckpointError(
            f"{s0.label}: unknown checkpoint_version {s0.version!r}; supported: 0, 1.0, 2.0, 3.0 (QKV layouts "
            f"{', '.join(f'{k:g}: {v}' for k, v in QKV_LAYOUTS.items())}). Save the checkpoint with a Megatron-LM "
            "release that writes one of these")
    if not s0.has_version:
        say(progress, "no checkpoint_version in the checkpoint: treating it as 0 (QKV layout [3, np, hn])")
    for s in shards:
        s.version = version
    declared = arg(s0.args, "tensor_model_parallel_size", "model_parallel_size")
    if parallel_on_disk and declared is not None and int(declared) != n:
        fix = (f"pass the folder holding all of mp_rank_00..mp_rank_{int(declared) - 1:02d} (not a single shard)"
               if n < int(declared) else "the folder mixes shards of different checkpoints")
        raise CheckpointError(
            f"{s0.label}: found {n} tensor-parallel shard(s) but args.tensor_model_parallel_size is {declared}; {fix}")
    check_supported(s0.args, s0.label)
    indices = s0.layer_indices()
    layers = int(arg(s0.args, "num_layers", default=max(indices, default=-1) + 1))
    if indices and max(indices) + 1 != layers:
        raise CheckpointError(f"{s0.label}: config/weight shape mismatch: args.num_layers={layers} but the checkpoint "
                              f"has layers 0..{max(indices)}; the args do not belong to these weights")
    required = ["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                "bert.encoder.ln.weight", "bert.encoder.ln.bias"]
    for i in range(layers):
        required += layer_keys(i)
    optional: list[str] = []
    untied = arg(s0.args, "untie_embeddings_and_output_weights")
    if untied is None:  # no args: an output weight beside the embeddings on a single stage means untied
        untied = UNTIED_DECODER in s0.tensors and "(in " not in s0.origin.get(UNTIED_DECODER, "")
    for s in shards:
        if not untied:
            s.tensors.pop(UNTIED_DECODER, None)  # the last pipeline stage's copy of the tied embeddings
            s.origin.pop(UNTIED_DECODER, None)
    for group in (POOLER, LM_HEAD, BINARY) + (([UNTIED_DECODER],) if untied else ()):
        if any(k in s0.tensors or k in s0.origin for k in group) or group == [UNTIED_DECODER]:
            required += group
            optional += group
    missing = [s.name(k) + (f" (in {s.label})" if n > 1 else "")
               for s in shards for k in required if k not in s.tensors]
    if missing:
        raise CheckpointError(
            f"{s0.label}: {len(missing)} tensors are missing: {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}. The checkpoint is incomplete or not a Megatron BERT")
    return version, layers, optional


def _tokenizer(vocab: str | Path, lowercase: bool | None, args: Any, src: Path, progress: Progress) -> Any:
    from ..tokenization import Tokenizer

    vocab = Path(vocab)  # an existing file: convert_megatron checked it
    kind = str(arg(args, "tokenizer_type", default=""))
    inferred = True if "LowerCase" in kind else False if "Case" in kind else \
        True if "uncased" in src.name.lower() else False if "cased" in src.name.lower() else None
    if lowercase is None:
        if inferred is None:
            raise CheckpointError("cannot tell whether the vocab is cased: pass lowercase=True or False "
                                  "(CLI: --lowercase / --cased)")
        lowercase = inferred
        say(progress, f"tokenizer: {'lower-casing' if lowercase else 'cased'} (from {kind or src.name})")
    elif inferred is not None and inferred != lowercase:
        say(progress, f"warning: lowercase={lowercase} but the checkpoint says {kind or src.name}")
    tokenizer = Tokenizer.from_vocab(vocab, lowercase=lowercase)
    if lowercase:  # lower-cased text never reaches an upper-case token: a cased vocab would be mostly dead
        words = [t for t in vocab.read_text(encoding="utf-8", errors="replace").split() if not t.startswith("[")]
        upper = sum(t != t.lower() for t in words)
        if words and upper / len(words) > 0.2:
            say(progress, f"warning: lower-casing, but {upper} of {len(words)} tokens in {vocab.name} have capitals "
                          "that lower-cased text never matches: is this a cased vocab (then pass --cased)?")
    return tokenizer


def convert_megatron(src: str | Path, dst: str | Path, *, vocab: str | Path | None = None,
                     lowercase: bool | None = None, allow_unsafe_pickle: bool = False, overwrite: bool = False,
                     num_attention_heads: int | None = None, progress: Progress = None) -> Path:
    """Convert a Megatron-LM BERT checkpoint into a Hugging Face MegatronBERT folder; returns `dst`.

    `src` may be an NGC zip (`release/mp_rank_00/model_optim_rng.pt` inside, possibly under a top
    folder, or a bare .pt), a release folder, a folder with `latest_checkpointed_iteration.txt` +
    `iter_XXXXXXX/`, a folder of `mp_rank_XX/` shards, or a single `.pt`. Tensor-parallel shards are
    merged; QKV is re-ordered by `checkpoint_version`; sizes, LayerNorm eps and GELU flavour come from
    the pickled args (shapes otherwise). Padded vocab rows are kept and the tokenizer's real size is
    recorded as `tokenizer_vocab_size`. The folder (config.json, model.safetensors, tokenizer files when
    `vocab` is given) is built beside `dst` and renamed into place only when complete. Weights keep the
    checkpoint's dtype (fp16 for NGC). `num_attention_heads` is needed only for checkpoints without
    args whose head size is not 64 (the head count cannot be read from tensor shapes).
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise CheckpointError(f"{src}: not found; pass a Megatron-LM checkpoint (.zip, folder or .pt)")
    if src.is_file() and (src.parent / "config.json").is_file() and src.suffix in (".safetensors", ".json", ".bin"):
        raise CheckpointError(f"{src} is a file of the Hugging Face folder {src.parent}: pass that folder, "
                              "which needs no conversion")
    check_output_dir(dst, overwrite, inputs=[p for p in (src, vocab) if p is not None])  # before reading shards
    if vocab is not None and not Path(vocab).is_file():
        raise CheckpointError(f"{vocab}: vocab file not found; pass the WordPiece vocab.txt of the model")
    new_parents = [p for p in (dst.parent, *dst.parent.parents) if not p.exists()]
    make_writable_dir(dst.parent)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{dst.name}.extract-", dir=dst.parent) as work:
            _convert(src, dst, Path(work), vocab=vocab, lowercase=lowercase, allow_unsafe_pickle=allow_unsafe_pickle,
                     overwrite=overwrite, num_attention_heads=num_attention_heads, progress=progress)
    except BaseException:
        for parent in new_parents:  # leave no trace: remove the folders this call created
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    say(progress, f"wrote {dst}")
    return dst


def _convert(src: Path, dst: Path, work: Path, *, vocab: str | Path | None, lowercase: bool | None,
             allow_unsafe_pickle: bool, overwrite: bool, num_attention_heads: int | None, progress: Progress) -> None:
    """The body of `convert_megatron`; `work` is a scratch folder (zip extraction) beside `dst`."""
    if src.is_dir():
        found = find_checkpoint(src, progress)
    elif src.suffix.lower() == ".zip" or (src.suffix.lower() not in (".pt", ".pth", ".bin", ".ckpt")
                                           and zipfile.is_zipfile(src) and not is_torch_archive(src)):
        extracted = extract_zip(src, work, progress)
        try:
            found = find_checkpoint(extracted, progress)
        except CheckpointError as exc:  # name the user's zip, not the temp folder it was extracted to
            raise CheckpointError(str(exc).replace(str(extracted), f"{src} (extracted)")) from None
    elif src.suffix == ".distcp" or src.name in (".metadata", "common.pt") and (src.parent / ".metadata").is_file():
        raise CheckpointError(f"{src} is one file of a torch_dist checkpoint; pass its folder ({src.parent}) or "
                              "the folder holding latest_checkpointed_iteration.txt")
    else:
        found = Grid([[src]])
    if isinstance(found, DistFolder):
        shard, _ = dist_shard(found.folder, label_of(found.folder, src), allow_unsafe_pickle, progress)
        shards, source = [shard], "megatron-core torch_dist"
        _check_dist_parallel(shard, found.folder)
    else:
        shards = _read_grid(found, src, allow_unsafe_pickle, progress)
        source = "megatron-core torch" if shards[0].kind == "mcore" else "megatron-lm"
    version, layers, optional = _validate(shards, progress, parallel_on_disk=not isinstance(found, DistFolder))
    config = build_config(shards, layers, len(shards), num_attention_heads, progress)
    pp = 1 if isinstance(found, DistFolder) else len(found.files[0])
    say(progress, f"{source} checkpoint (QKV layout {QKV_LAYOUTS[version]}), {len(shards)} tensor-parallel x {pp} "
                  f"pipeline-parallel shard(s), {layers} layers, hidden {config['hidden_size']}, "
                  f"{config['num_attention_heads']} heads, ffn {config['intermediate_size']}, {config['vocab_size']} "
                  f"vocab rows, eps {config['layer_norm_eps']:g}")
    args = shards[0].args
    if vocab is None and isinstance(arg(args, "vocab_file"), str) and Path(args.vocab_file).is_file():
        vocab = Path(args.vocab_file)
        say(progress, f"tokenizer: using args.vocab_file {vocab}")
    tokenizer = None
    if vocab is not None:
        tokenizer = _tokenizer(vocab, lowercase, args, src, progress)
        if tokenizer.vocab_size > config["vocab_size"]:
            raise CheckpointError(
                f"{vocab}: the vocab has {tokenizer.vocab_size} tokens but the checkpoint's embedding has only "
                f"{config['vocab_size']} rows; this vocab belongs to another model: pass the model's own vocab")
        config["tokenizer_vocab_size"] = tokenizer.vocab_size
    elif config["vocab_size"] in NGC_VOCAB_SIZES and config["hidden_size"] == 1024:
        config["tokenizer_vocab_size"] = NGC_VOCAB_SIZES[config["vocab_size"]]
        say(progress, f"assuming the NGC BERT vocab ({config['tokenizer_vocab_size']} tokens); pass the vocab "
                      "file to record its exact size")
    has = set(optional)
    config["architectures"] = ["MegatronBertForPreTraining" if set(LM_HEAD + BINARY) <= has else
                               "MegatronBertForMaskedLM" if set(LM_HEAD) <= has else "MegatronBertModel"]
    if UNTIED_DECODER in has:
        config["tie_word_embeddings"] = False
    from ..config import MegatronBertConfig

    hf_config = MegatronBertConfig(**config)
    entries = merge_plan(shards, config, layers, optional)
    check_shapes(entries, config, shards[0].label)
    with atomic_dir(dst, overwrite=overwrite, inputs=[p for p in (src, vocab) if p is not None]) as tmp:
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        say(progress, f"writing {SAFE_WEIGHTS_NAME} ({len(entries)} tensors)")
        write_safetensors(tmp / SAFE_WEIGHTS_NAME, entries,
                          {"source": source, "qkv_layout": QKV_LAYOUTS[version],
                           **({"checkpoint_version": f"{version:g}"} if shards[0].kind == "legacy" else {})},
                          progress=progress)
        del shards, entries
        hf_config.save_pretrained(tmp)
    if "lm_head_act" in config and LM_HEAD[0] in has:
        say(progress, approximation_note(dst, hf_config))


def _check_dist_parallel(shard: Shard, folder: Path) -> None:
    """torch_dist stores global tensors: TP/PP in the args only need every data file, checked on open;
    a stacked tensor shorter than args.num_layers means stages are missing."""
    layers = arg(shard.args, "num_layers")
    found = len(shard.layer_indices())
    if layers is not None and found and int(layers) != found:
        raise CheckpointError(f"{folder}: args.num_layers={layers} but the stacked layer tensors hold {found} layers; "
                              "the checkpoint is incomplete (pipeline stages missing?) or its args belong to another "
                              "model")


#: max |GELU_tanh(x) - GELU_erf(x)| over all x (4.73e-4, reached near |x| = 2.7).
GELU_TANH_MAX_ERROR = 4.7e-4


def approximation_note(folder: Path, config: Any) -> str:
    """What Hugging Face transformers does with a folder whose LM head activation differs from the MLP's:
    it ignores `lm_head_act` and applies `hidden_act` there too. Measured on the converted LM head (read
    back from model.safetensors) over 256 vectors distributed as the final LayerNorm's outputs."""
    import torch
    from safetensors import safe_open

    from ..modeling import activation

    with safe_open(str(folder / SAFE_WEIGHTS_NAME), framework="pt") as f:
        def get(name: str) -> torch.Tensor:
            return f.get_tensor(name).float()

        decoder = get(UNTIED_DECODER if UNTIED_DECODER in f.keys() else "bert.embeddings.word_embeddings.weight")
        g = torch.Generator().manual_seed(0)
        x = get("bert.encoder.ln.weight") * torch.randn(256, config.hidden_size, generator=g) \
            + get("bert.encoder.ln.bias")
        dense = x @ get("cls.predictions.transform.dense.weight").T + get("cls.predictions.transform.dense.bias")
        ln = (get("cls.predictions.transform.LayerNorm.weight"), get("cls.predictions.transform.LayerNorm.bias"))
        logits = [torch.nn.functional.layer_norm(activation(name)(dense), (config.hidden_size,), *ln,
                                                 config.layer_norm_eps) @ decoder.T + get("cls.predictions.bias")
                  for name in (config.lm_head_act, config.hidden_act)]
    diff = (logits[0] - logits[1]).abs().max().item()
    return (f"note: transformers ignores lm_head_act={config.lm_head_act!r} and will run the LM-head transform with "
            f"hidden_act={config.hidden_act!r}, an approximation of this checkpoint (at most "
            f"{GELU_TANH_MAX_ERROR:.1e} per activation; max |LM logit difference| {diff:.1e} measured on this "
            f"model's LM head); mbert-export's model, ONNX graphs and engines use {config.lm_head_act!r} there")
