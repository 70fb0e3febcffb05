#!/usr/bin/env python3
"""Train the demo MegatronBERT masked LM (`models/megatron-bert-demo/`) from scratch on the CPU.

Why: the pipeline (export, FP16/INT8 graphs, engines, runtime) needs a model whose predictions mean
something, small enough to commit and to test in seconds, that anyone can rebuild from registry
packages alone. This script trains one on the train split of the calibration corpus
(`calibration/corpus/train.txt`); the held-out split is only used for the reported accuracy.

Steps: (1) a lowercase BERT WordPiece vocabulary (`tokenizers` WordPiece trainer), saved with
`mbert_export.tokenization.Tokenizer`; (2) a pre-LayerNorm MegatronBERT (`MegatronBertForMaskedLM`)
trained with BERT masking (15%: 80/10/10), a sequence-length curriculum (32/64 first, then 64/128/256)
with dynamic padding, two-segment rows, AdamW with warmup + cosine decay, bf16 autocast on the CPU
(fp32 master weights; the saved weights are fp32); (3) held-out masked-LM accuracy with
`mbert_export.calibration.masked_lm_examples` + `mlm_accuracy`, against the most-frequent-token
baseline; (4) the folder (config.json, model.safetensors, tokenizer files, README.md model card,
training_summary.json) is written to a temp folder and renamed into place.

    PYTHONPATH=. python scripts/train_demo_model.py --overwrite   # ~5 min on 2 idle cores, more under load
    PYTHONPATH=. python scripts/train_demo_model.py --vocab models/megatron-bert-demo/vocab.txt --output /tmp/demo  # reproduce
    PYTHONPATH=. python scripts/train_demo_model.py --steps 50 --output /tmp/demo   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import tokenizers  # noqa: E402
import torch  # noqa: E402
from tokenizers import models, normalizers, pre_tokenizers, trainers  # noqa: E402

from mbert_export import calibration  # noqa: E402
from mbert_export.config import MegatronBertConfig  # noqa: E402
from mbert_export.fileio import atomic_dir  # noqa: E402
from mbert_export.modeling import MegatronBertForMaskedLM  # noqa: E402
from mbert_export.tokenization import Tokenizer  # noqa: E402

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
#: Sequence-length curriculum: (share of the steps, lengths, their probabilities). Short rows first
#: (attention over few tokens escapes the unigram plateau of MLM training sooner), then the mix
#: the model is served with. Every step carries ~TOKENS_PER_STEP token slots.
SEQ_SCHEDULE = (
    (0.4, (32, 64), (0.5, 0.5)),
    (0.6, (64, 128, 256), (0.4, 0.4, 0.2)),
)
TOKENS_PER_STEP = 2048
MAX_MODEL_BYTES = 15 * 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, default=REPO / "models" / "megatron-bert-demo")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (at most the machine's cores)")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup", type=float, default=0.04, help="warmup share of the steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--vocab-size", type=int, default=3000, help="WordPiece tokens (incl. specials)")
    p.add_argument("--vocab", type=Path, default=None,
                   help="use this vocab.txt (e.g. models/megatron-bert-demo/vocab.txt) instead of training "
                        "one: the tokenizers WordPiece trainer breaks count ties in hash-map order, so two "
                        "trainings can differ by ~100 tokens (huggingface/tokenizers#1794)")
    p.add_argument("--pad-vocab-to", type=int, default=128,
                   help="embedding rows are padded to a multiple of this, as Megatron-LM does")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--max-positions", type=int, default=256)
    p.add_argument("--init-range", type=float, default=0.05,
                   help="std of the initial weights (HF default 0.02 is for hidden >= 768; larger "
                        "shortens the initial plateau of a small model)")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="train in fp32 (bf16 autocast is ~2.5x faster on CPUs with AVX512-BF16)")
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--max-minutes", type=float, default=28.0,
                   help="stop training early (and say so in the model card) past this wall time")
    p.add_argument("--log-every", type=int, default=50)
    return p.parse_args(argv)


def train_tokenizer(passages: list[str], vocab_size: int, max_length: int) -> Tokenizer:
    """A lowercase BERT WordPiece vocabulary trained on `passages`, as a project `Tokenizer`."""
    backend = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                        limit_alphabet=200, continuing_subword_prefix="##",
                                        show_progress=False)
    backend.train_from_iterator(passages, trainer, length=len(passages))
    vocab = backend.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "WordPiece ids are not contiguous"
    assert tokens[:len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        return Tokenizer.from_vocab(path, True, model_max_length=max_length)


def seq_schedule(step: int, total: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The (lengths, probabilities) of SEQ_SCHEDULE in force at `step`."""
    start = 0.0
    for share, lengths, weights in SEQ_SCHEDULE:
        start += share
        if step < start * total:
            return lengths, weights
    return SEQ_SCHEDULE[-1][1], SEQ_SCHEDULE[-1][2]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak`, then cosine decay to 2% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def evaluate(model: MegatronBertForMaskedLM, tokenizer: Tokenizer, samples: int, seq_len: int) -> dict:
    """Held-out masked-LM accuracy (fp32, eval mode) and the most-frequent-token baseline."""
    batches = calibration.masked_lm_examples(tokenizer, split="heldout", num_samples=samples,
                                             seq_len=seq_len, seed=0, real_vocab_size=tokenizer.vocab_size)
    model.eval()

    def logits_fn(inputs):
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})["logits"]
        return out.numpy()

    accuracy = calibration.mlm_accuracy(logits_fn, batches, tokenizer.vocab_size)
    token_id, baseline = calibration.most_frequent_token_baseline(batches)
    labelled = sum(int((b["labels"] != calibration.IGNORE_INDEX).sum()) for b in batches)
    return {"seq_len": seq_len, "rows": samples, "masked_tokens": labelled, "accuracy": accuracy,
            "baseline_token": tokenizer.convert_ids_to_tokens(token_id), "baseline_accuracy": baseline}


def fill_mask_examples(model, tokenizer, sentences: list[str], top_k: int = 5) -> list[tuple[str, list[str]]]:
    model.eval()
    out = []
    for sentence in sentences:
        batch = tokenizer([sentence])
        with torch.no_grad():
            logits = model(**{k: torch.from_numpy(batch[k]) for k in calibration.MODEL_INPUTS})["logits"][0]
        position = int(np.flatnonzero(batch["input_ids"][0] == tokenizer.mask_token_id)[0])
        top = torch.topk(logits[position, :tokenizer.vocab_size], top_k).indices.tolist()
        out.append((sentence, tokenizer.convert_ids_to_tokens(top)))
    return out


def model_card(config: MegatronBertConfig, args: argparse.Namespace, summary: dict) -> str:
    evals = summary["eval"]
    schedule = "; ".join(f"{share:.0%} of the steps at " + "/".join(map(str, lengths)) + " tokens (p "
                         + "/".join(map(str, weights)) + ")" for share, lengths, weights in SEQ_SCHEDULE)
    rows = "\n".join(f"| {e['seq_len']} | {e['rows']} | {e['masked_tokens']} | {e['accuracy']:.1%} | "
                     f"{e['baseline_accuracy']:.1%} (`{e['baseline_token']}`) |" for e in evals)
    examples = "\n".join(f"| `{s}` | {', '.join(f'`{t}`' for t in top)} |" for s, top in summary["fill_mask"])
    stopped = ("" if not summary["stopped_early"] else
               f"\n**Training stopped early** at step {summary['steps_done']} of {args.steps} "
               f"(wall-time limit {args.max_minutes} min).\n")
    return f"""# megatron-bert-demo

A small MegatronBERT (pre-LayerNorm BERT) masked language model trained from scratch on the CPU by
`scripts/train_demo_model.py`, for demonstrating and testing the mbert-export pipeline (ONNX export,
FP16/INT8 graphs, TensorRT engines, runtime `fill_mask`). It is a toy: it knows the vocabulary and
phrasing of the Python documentation and little else.
{stopped}
## Data

Train split of `calibration/corpus/` (prose extracted from Debian's `python3.11-doc` package, PSF
License Version 2; see `calibration/README.md`): {summary['train_passages']} passages,
{summary['train_tokens']:,} WordPiece tokens. The held-out split ({summary['heldout_passages']} passages)
was used only for the evaluation below.

## Tokenizer

Lowercase BERT WordPiece (BertNormalizer with lowercasing and accent stripping, BertPreTokenizer,
`##` continuations), trained with the `tokenizers` WordPiece trainer on the train split:
{config.tokenizer_vocab_size} tokens (`[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4),
`model_max_length` {args.max_positions}. Loads with `mbert_export.tokenization.Tokenizer` and with
transformers' `AutoTokenizer` / `BertTokenizerFast` (same ids).

## Architecture

`MegatronBertForMaskedLM`: {config.num_hidden_layers} layers, hidden {config.hidden_size},
{config.num_attention_heads} heads, intermediate {config.intermediate_size}, `{config.hidden_act}`
activation, {config.max_position_embeddings} positions, LayerNorm eps {config.layer_norm_eps},
tied input/output embeddings. The embedding has **{config.vocab_size} rows for
{config.tokenizer_vocab_size} tokens**: like Megatron-LM checkpoints, the vocabulary is padded to a
multiple of {args.pad_vocab_to} (`tokenizer_vocab_size` in config.json); logits of rows
{config.tokenizer_vocab_size}..{config.vocab_size - 1} are not tokens and must be ignored.
{summary['parameters']:,} parameters, stored as fp32 safetensors ({summary['model_bytes'] / 1e6:.1f} MB).

## Training

| setting | value |
|---|---|
| objective | masked LM only (15% of tokens; 80% `[MASK]`, 10% random, 10% kept), no NSP |
| inputs | passages packed into rows; sequence-length curriculum {schedule}; ~{TOKENS_PER_STEP} token slots per step, dynamic padding; half the rows split into two segments (`token_type_ids` 1 for the second) |
| optimizer | AdamW, peak lr {args.lr}, betas (0.9, 0.98), eps 1e-6, weight decay {args.weight_decay} (not on biases/LayerNorms), grad-norm clip 1.0 |
| schedule | linear warmup {summary['warmup_steps']} steps, cosine decay to 2% |
| steps | {summary['steps_done']} ({summary['tokens_seen']:,} token slots, {summary['epochs']:.1f} epochs) |
| precision | {'bf16 autocast, fp32 master weights' if args.bf16 else 'fp32'}; saved weights fp32 |
| dropout | {args.dropout} |
| init | N(0, {args.init_range}) weights (`initializer_range`) |
| seed | {args.seed} |
| hardware | {summary['hardware']} |
| training time | {summary['train_seconds'] / 60:.1f} min (tokenizer {summary['tokenizer_seconds']:.0f} s) |
| final train loss | {summary['final_loss']:.3f} (mean of the last {args.log_every} steps) |
| versions | {summary['versions']} |

## Evaluation (held-out split)

`mbert_export.calibration.masked_lm_examples(tokenizer, split="heldout", num_samples=N, seq_len=L, seed=0)`
and `mlm_accuracy` (fp32, padded vocab rows excluded). Baseline: always predict the most frequent
masked token of the same sample (an optimistic unigram baseline).

| seq_len | rows | masked tokens | top-1 accuracy | most-frequent-token baseline |
|---|---|---|---|---|
{rows}

Fill-mask examples (top 5):

| input | predictions |
|---|---|
{examples}

## Rebuild

```bash
PYTHONPATH=. python scripts/train_demo_model.py --overwrite
```

The `tokenizers` WordPiece trainer is not deterministic (it breaks count ties in hash-map order,
huggingface/tokenizers#1794: two runs differ in ~100 of 3000 tokens). To retrain on this exact
vocabulary, pass it in: `--vocab models/megatron-bert-demo/vocab.txt --output OTHER_FOLDER`. With
a fixed vocabulary, the seed fixes initialisation, data order and masking.
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
        print(f"{args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    started = time.time()

    # ---------------------------------------------------------------- tokenizer
    train_passages = calibration.load_passages("train")
    heldout_passages = calibration.load_passages("heldout")
    t0 = time.time()
    if args.vocab is not None:
        tokenizer = Tokenizer.from_vocab(args.vocab, True, model_max_length=args.max_positions)
    else:
        tokenizer = train_tokenizer(train_passages, args.vocab_size, args.max_positions)
    tokenizer_seconds = time.time() - t0
    real_vocab = tokenizer.vocab_size
    padded_vocab = math.ceil(real_vocab / args.pad_vocab_to) * args.pad_vocab_to
    encoded = [list(e.ids) for e in tokenizer.backend.encode_batch(train_passages, add_special_tokens=False)]
    train_tokens = sum(map(len, encoded))
    print(f"tokenizer: {real_vocab} tokens (embedding rows {padded_vocab}), {train_tokens:,} train tokens, "
          f"unk ratio {calibration.unk_ratio(tokenizer, heldout_passages[:500]):.4f} on held-out, "
          f"{tokenizer_seconds:.1f}s", flush=True)

    # ---------------------------------------------------------------- model
    config = MegatronBertConfig(
        vocab_size=padded_vocab, tokenizer_vocab_size=real_vocab, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, intermediate_size=args.intermediate,
        hidden_act="gelu", hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout,
        initializer_range=args.init_range,
        max_position_embeddings=args.max_positions, type_vocab_size=2, layer_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id)
    model = MegatronBertForMaskedLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    if parameters * 4 > MAX_MODEL_BYTES:
        print(f"{parameters:,} parameters are {parameters * 4 / 1e6:.1f} MB in fp32, over the "
              f"{MAX_MODEL_BYTES / 1e6:.1f} MB budget; shrink the model", file=sys.stderr)
        return 2
    print(f"model: {parameters:,} parameters, config {config.num_hidden_layers}L/{config.hidden_size}H/"
          f"{config.num_attention_heads}A/{config.intermediate_size}I", flush=True)

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or ".ln." in name or name.endswith("ln.weight")
         or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, int(args.warmup * args.steps))

    # ---------------------------------------------------------------- training
    def new_packer():
        return calibration.PassagePacker(tokenizer, token_ids=encoded, order=rng.permutation(len(encoded)))

    packer, epochs_done = new_packer(), 0
    special_ids = tokenizer.all_special_ids
    model.train()
    t0 = time.time()
    losses, tokens_seen, step, stopped_early = [], 0, 0, False
    for step in range(args.steps):
        if (time.time() - t0) / 60 > args.max_minutes:
            stopped_early = True
            print(f"wall-time limit reached after {step} steps", flush=True)
            break
        lengths, weights = seq_schedule(step, args.steps)
        seq_len = int(rng.choice(lengths, p=weights))
        rows = TOKENS_PER_STEP // seq_len
        batch = calibration.build_rows(tokenizer, packer, rows, seq_len, rng, pair_prob=0.5)
        if packer.wrapped:
            packer, epochs_done = new_packer(), epochs_done + 1
        width = int(batch["attention_mask"].sum(1).max())  # dynamic padding
        batch = {k: v[:, :width] for k, v in batch.items()}
        ids, labels = calibration.bert_mask(batch["input_ids"], batch["special_tokens_mask"], rng,
                                            mask_token_id=tokenizer.mask_token_id, vocab_size=real_vocab,
                                            special_ids=special_ids)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup)
        labels_t = torch.from_numpy(labels)
        selected = labels_t != calibration.IGNORE_INDEX
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            hidden = model.bert(torch.from_numpy(ids), torch.from_numpy(batch["attention_mask"]),
                                torch.from_numpy(batch["token_type_ids"]))["last_hidden_state"]
            logits = model.cls(hidden[selected])  # the MLM head only where there is a label
        loss = torch.nn.functional.cross_entropy(logits.float(), labels_t[selected])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        tokens_seen += rows * seq_len
        if (step + 1) % args.log_every == 0 or step == 0 or step + 1 == args.steps:
            elapsed = time.time() - t0
            recent = losses[-args.log_every:]
            print(f"step {step + 1:5d}/{args.steps}  loss {sum(recent) / len(recent):.3f}  "
                  f"lr {optimizer.param_groups[0]['lr']:.2e}  len {seq_len:3d}  "
                  f"elapsed {elapsed / 60:5.1f} min  {tokens_seen / elapsed:,.0f} tok/s", flush=True)
    steps_done = step + 1 if not stopped_early else step
    train_seconds = time.time() - t0
    model.tie_weights()

    # ---------------------------------------------------------------- evaluation
    evals = [evaluate(model, tokenizer, args.eval_samples, 128)]
    evals += [evaluate(model, tokenizer, args.eval_samples // 2, n) for n in (64, 256)]
    for e in evals:
        print(f"held-out MLM accuracy (seq {e['seq_len']}): {e['accuracy']:.4f}  baseline "
              f"{e['baseline_accuracy']:.4f} ({e['baseline_token']!r}), {e['masked_tokens']} masked tokens",
              flush=True)
    examples = fill_mask_examples(model, tokenizer, [
        "the [MASK] statement is used to leave a loop early.",
        "this function returns a new [MASK] containing the items of the iterable.",
        "if the file does not exist, an [MASK] is raised.",
        "the default value of the timeout argument is [MASK].",
    ])
    summary = {
        "train_passages": len(train_passages), "heldout_passages": len(heldout_passages),
        "train_tokens": train_tokens, "parameters": parameters, "steps_done": steps_done,
        "stopped_early": stopped_early, "warmup_steps": warmup, "tokens_seen": tokens_seen,
        "epochs": tokens_seen / train_tokens, "train_seconds": train_seconds,
        "tokenizer_seconds": tokenizer_seconds, "final_loss": sum(losses[-args.log_every:]) / len(losses[-args.log_every:]),
        "eval": evals, "fill_mask": examples, "seed": args.seed,
        "hardware": f"{platform.machine()} CPU ({_cpu_name()}), {args.threads} torch threads",
        "versions": f"torch {torch.__version__}, tokenizers {tokenizers.__version__}, numpy {np.__version__}, "
                    f"python {platform.python_version()}",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }

    # ---------------------------------------------------------------- write atomically
    with atomic_dir(args.output, overwrite=args.overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        model_bytes = (tmp / "model.safetensors").stat().st_size
        if model_bytes > MAX_MODEL_BYTES:
            raise SystemExit(f"model.safetensors is {model_bytes / 1e6:.1f} MB, over the budget")
        summary["model_bytes"] = model_bytes
        (tmp / "README.md").write_text(model_card(config, args, summary), encoding="utf-8")
        (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output} in {(time.time() - started) / 60:.1f} min total", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
