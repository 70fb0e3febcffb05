"""The one task table: task name -> head class, ONNX inputs/outputs, dynamic axes, runtime methods.

Export, build and runtime all read this table; adding a head is one entry here. It imports neither
torch nor transformers, so a deployment image can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

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
