"""Test helpers: tiny configs, random inputs, and the Hugging Face oracle on the same weights."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mbert_export.config import preset_config  # noqa: E402
from mbert_export.modeling import MODEL_CLASSES  # noqa: E402
from mbert_export.tasks import get_task, sample_inputs  # noqa: E402

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
    """`mbert_export.tasks.sample_inputs` as torch tensors; `num_choices` adds the choices axis."""
    task = get_task("multiple-choice" if num_choices else "mlm")
    feeds = sample_inputs(config, task, batch, seq, seed=seed, padded=padded, num_choices=num_choices or 2)
    return {name: torch.from_numpy(value) for name, value in feeds.items()}


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


def run_in_threads(call, threads: int, repeats: int = 1) -> list:
    """Run `call()` `repeats` times in each of `threads` threads at once; the results (first error re-raised)."""
    results, errors = [], []

    def work():
        try:
            for _ in range(repeats):
                results.append(call())
        except Exception as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return results


def run_without_modules(code: str, blocked=("torch", "transformers", "tensorrt", "onnx")) -> subprocess.CompletedProcess:
    """Run Python `code` in a fresh process (the repository on its path) where importing `blocked` fails."""
    root = Path(__file__).resolve().parents[1]
    guard = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {tuple(blocked)!r}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""
    return subprocess.run([sys.executable, "-c", guard + code], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
