"""The one client interface of every served model: text tensors in, a JSON `RESULT` per row out.

Shared by the repository writer (config inputs and parameters), the python-backend models (request
parsing) and the client (request building), so the three never disagree. Torch-free, Triton-free.

A model takes `TEXT` (TYPE_STRING, dims [1], one text per row; pair tasks also `TEXT_PAIR`; question
answering `QUESTION` and `CONTEXT`; multiple choice `TEXT` and `CHOICES`, a JSON list per row) and
returns `RESULT` (TYPE_STRING, dims [1]): per row the JSON of what the in-process task method
returns for that row. Request parameters: `method` (default: the task's first method) and the
method's options, each a JSON-encoded string; config parameters hold the defaults.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

import numpy as np

from ..tasks import Task

RESULT = "RESULT"
METHOD = "method"
#: Runtime method -> (argument name -> input tensor name), in call order. The first is required.
METHOD_INPUTS: dict[str, dict[str, str]] = {
    "fill_mask": {"text": "TEXT"},
    "next_token": {"text": "TEXT"},
    "classify": {"text": "TEXT", "text_pair": "TEXT_PAIR"},
    "classify_tokens": {"text": "TEXT"},
    "answer_question": {"question": "QUESTION", "context": "CONTEXT"},
    "next_sentence": {"a": "TEXT", "b": "TEXT_PAIR"},
    "multiple_choice": {"prompt": "TEXT", "choices": "CHOICES"},
    "embed": {"texts": "TEXT"},
}
#: Inputs a method may leave out.
OPTIONAL_ARGUMENTS = {("classify", "text_pair")}
#: Inputs holding JSON (a list per row) instead of plain text.
JSON_INPUTS = {"CHOICES"}


@functools.lru_cache(maxsize=None)
def _options(method: str) -> tuple[tuple[str, Any], ...]:
    from ..runtime.pipeline import MegatronBertPipeline

    signature = inspect.signature(getattr(MegatronBertPipeline, method))
    return tuple((name, p.default) for name, p in signature.parameters.items()
                 if name != "self" and name not in METHOD_INPUTS[method])


def method_options(method: str) -> dict[str, Any]:
    """The keyword options of a runtime method and their defaults (the pipeline's own signature)."""
    return dict(_options(method))


def task_inputs(task: Task) -> dict[str, bool]:
    """Input tensor name -> required, over all methods of `task` (an input some method lacks is optional)."""
    names = [n for m in task.methods for n in METHOD_INPUTS[m].values()]
    return {name: all(any(n == name and (m, a) not in OPTIONAL_ARGUMENTS for a, n in METHOD_INPUTS[m].items())
                      for m in task.methods)
            for name in dict.fromkeys(names)}


def task_defaults(task: Task) -> dict[str, str]:
    """Config parameters of a task's model: `task`, `method` and every option's default, JSON-encoded."""
    params = {"task": task.name, METHOD: task.methods[0]}
    for method in task.methods:
        for name, default in method_options(method).items():
            params.setdefault(name, encode_option(default))
    return params


def encode_option(value: Any) -> str:
    """An option value as a parameter string (JSON; tuples become lists, numpy scalars Python numbers)."""
    def plain(item: Any) -> Any:
        if isinstance(item, np.generic):
            return item.item()
        raise TypeError(f"{type(item).__name__} is not JSON")
    return json.dumps(list(value) if isinstance(value, tuple) else value, default=plain)


def decode_option(text: Any) -> Any:
    """A parameter value back: JSON when it parses (5, true, null, ["O"]), else the plain string."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
