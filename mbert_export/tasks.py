"""The one task table: task name -> head class, ONNX inputs/outputs, dynamic axes, runtime methods.

Export, build and runtime all read this table; adding a head is one entry here. It imports neither
torch nor transformers, so a deployment image can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

#: Axis names users see in the ONNX graph and in TensorRT optimization profiles.
BATCH, SEQUENCE, NUM_CHOICES = "batch", "sequence", "num_choices"
PER_TOKEN = {0: BATCH, 1: SEQUENCE}
PER_SEQUENCE = {0: BATCH}


@dataclass(frozen=True)
class Task:
    """What one task exports and how its outputs are read."""

    name: str
    model_class: str
    #: Output name -> {axis index: axis name}. Order is the ONNX output order.
    outputs: dict[str, dict[int, str]]
    #: Runtime methods that make sense for this head (besides `run`, available everywhere).
    methods: tuple[str, ...]
    #: Input axes; multiple choice adds `num_choices` between batch and sequence.
    input_axes: dict[int, str] = None  # type: ignore[assignment]
    #: Causal LM runs the encoder with a causal mask (config `is_decoder=True`).
    is_decoder: bool = False
    #: Output whose last axis is the vocabulary (padded rows must never be predicted).
    vocab_output: str | None = None

    def __post_init__(self) -> None:
        if self.input_axes is None:
            object.__setattr__(self, "input_axes", dict(PER_TOKEN))

    @property
    def inputs(self) -> tuple[str, ...]:
        return TEXT_INPUTS

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.outputs)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The `dynamic_axes` mapping for every input and output of the graph."""
        axes = {name: dict(self.input_axes) for name in self.inputs}
        axes.update({name: dict(a) for name, a in self.outputs.items()})
        return axes


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("base", "MegatronBertModel",
         {"last_hidden_state": PER_TOKEN, "pooler_output": PER_SEQUENCE}, ("embed",)),
    Task("mlm", "MegatronBertForMaskedLM", {"logits": PER_TOKEN}, ("fill_mask",), vocab_output="logits"),
    Task("causal-lm", "MegatronBertForCausalLM", {"logits": PER_TOKEN}, ("next_token",),
         is_decoder=True, vocab_output="logits"),
    Task("nsp", "MegatronBertForNextSentencePrediction", {"logits": PER_SEQUENCE}, ("next_sentence",)),
    Task("pretraining", "MegatronBertForPreTraining",
         {"prediction_logits": PER_TOKEN, "seq_relationship_logits": PER_SEQUENCE},
         ("fill_mask", "next_sentence"), vocab_output="prediction_logits"),
    Task("sequence-classification", "MegatronBertForSequenceClassification",
         {"logits": PER_SEQUENCE}, ("classify",)),
    Task("multiple-choice", "MegatronBertForMultipleChoice",
         {"logits": {0: BATCH, 1: NUM_CHOICES}}, ("multiple_choice",),
         input_axes={0: BATCH, 1: NUM_CHOICES, 2: SEQUENCE}),
    Task("token-classification", "MegatronBertForTokenClassification",
         {"logits": PER_TOKEN}, ("classify_tokens",)),
    Task("question-answering", "MegatronBertForQuestionAnswering",
         {"start_logits": PER_TOKEN, "end_logits": PER_TOKEN}, ("answer_question",)),
)}


def get_task(name: str) -> Task:
    """The task called `name`, or a ValueError listing the valid names."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


def sample_inputs(config, task: Task, batch: int, seq: int, seed: int = 0, padded: bool = True,
                  num_choices: int = 2) -> dict[str, np.ndarray]:
    """Random int64 inputs for `task` from `config`'s real vocabulary.

    Rows after the first are right-padded to random lengths when `padded`; token types mark a second
    segment. Shape (batch, seq), or (batch, num_choices, seq) for multiple choice.
    """
    rng = np.random.default_rng(seed)
    vocab = config.real_vocab_size
    shape = (batch, num_choices, seq) if NUM_CHOICES in task.input_axes.values() else (batch, seq)
    ids = rng.integers(1, vocab, size=shape, dtype=np.int64)
    mask = np.ones(shape, dtype=np.int64)
    types = np.zeros(shape, dtype=np.int64)
    rows_ids, rows_mask, rows_types = ids.reshape(-1, seq), mask.reshape(-1, seq), types.reshape(-1, seq)
    for row in range(rows_ids.shape[0]):
        length = int(rng.integers(1, seq + 1)) if padded and row > 0 else seq
        rows_ids[row, length:] = config.pad_token_id
        rows_mask[row, length:] = 0
        rows_types[row, int(rng.integers(0, length + 1)):length] = min(1, config.type_vocab_size - 1)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
