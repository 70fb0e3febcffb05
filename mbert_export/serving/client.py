"""`TritonMegatronBert`: the runtime's task methods, answered by a Triton server.

    mlm = TritonMegatronBert("localhost:8000", "mlm")          # protocol="grpc" for port 8001
    mlm.fill_mask("Paris is the [MASK] of France.", top_k=3)   # same result as OrtMegatronBert(...)

Each method has the signature and return value of the in-process method (`MegatronBertPipeline`);
the server runs that very method (layout python) or its tokenization and post-processing around
the graph (ensemble). Options not given take the model's config defaults. A request the server
refuses raises `TritonRequestError` (a ValueError) with the server's message. Over gRPC one object
may be shared by threads; over HTTP it belongs to the thread that made it (tritonclient's HTTP client
is not thread-safe): make one per thread.
"""

from __future__ import annotations

import functools
import http.client
import inspect
import json
import numbers
import re
import socket
import threading
from typing import Any, Callable

import numpy as np

from ..runtime.pipeline import MegatronBertPipeline, wrong_task_error
from ..tasks import get_task
from .interface import JSON_INPUTS, METHOD, METHOD_INPUTS, OPTIONAL_ARGUMENTS, RESULT, encode_option

__all__ = ["TritonMegatronBert", "TritonRequestError"]


class TritonRequestError(ValueError):
    """The server answered a request with an error (bad input, wrong task, ...)."""


def _import(protocol: str):
    if protocol not in ("http", "grpc"):
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError:
        raise ImportError(f"TritonMegatronBert needs tritonclient: pip install 'tritonclient[{protocol}]' "
                          "(or mbert-export[serve])") from None
    from tritonclient.utils import InferenceServerException

    return module, InferenceServerException


#: What the HTTP client raises, unwrapped, when nothing (or no HTTP server) answers at the URL: a refused
#: or reset connection, an unknown host, and geventhttpclient's parse error (http.client.HTTPException),
#: e.g. on the gRPC port. Timeouts are not among them: a slow answer is not a missing server.
_CONNECTION_ERRORS = (ConnectionError, socket.gaierror, http.client.HTTPException)


def _unreachable(url: str, protocol: str, error: Exception) -> str:
    kind = "HTTP" if protocol == "http" else "gRPC"
    return (f"no Triton {kind} endpoint answers at {url} ({type(error).__name__}: {error}); is the server running, "
            f"and is this its {kind} port?")


def _message_dict(message: Any) -> dict[str, Any]:
    """A gRPC response as the dict the HTTP client returns: 64-bit integers as ints, enums by name.

    Written by hand because protobuf's JSON mapping (tritonclient's `as_json=True`, `MessageToDict`)
    turns int64/uint64 into strings and drops zero fields, so the same call would answer `"12"` over
    gRPC and `12` over HTTP. Scalar and repeated fields are kept at their defaults; unset messages left out.
    """
    def scalar(field, value):
        if field.message_type is not None:
            return _message_dict(value)
        return field.enum_type.values_by_number[value].name if field.enum_type is not None else value

    plain: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value, nested = getattr(message, field.name), field.message_type
        if nested is not None and nested.GetOptions().map_entry:
            value_field = nested.fields_by_name["value"]
            plain[field.name] = {k: scalar(value_field, v) for k, v in value.items()}
        elif field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED:  # >= 6.31 / older
            plain[field.name] = [scalar(field, v) for v in value]
        elif nested is None or message.HasField(field.name):
            plain[field.name] = scalar(field, value)
    return plain


#: The rows the server names in its messages (`text[3]`, `choices[0][1]`): counted from the start of the
#: piece of rows it was sent, which the client turns back into the caller's count.
_ROW_REFERENCE = re.compile(r"\b(text|text_pair|a|b|question|context|prompt|choices|texts)\[(\d+)\]")
#: The tokenizer's own wording for a row ("input 8 is 304 tokens long").
_INPUT_ROW = re.compile(r"\binput (\d+)\b")


def _check_arguments(url: Any, name: Any, timeout: Any, model_version: Any) -> None:
    if not isinstance(url, str) or not url.strip():
        raise TypeError(f"url must be a 'host:port' string such as 'localhost:8000', got {url!r}")
    if "://" in url:
        raise ValueError(f"url {url!r}: give host:port without a scheme, e.g. {url.split('://', 1)[1]!r}; the "
                         "protocol argument ('http' or 'grpc') says how to talk to it")
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be the model's name in the repository (a non-empty str), got {name!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(model_version, str):
        raise TypeError(f"model_version must be a str ('' for the newest), got {model_version!r}")


class TritonMegatronBert:
    """A model served by Triton (written by `mbert-export triton`), with the runtime's task methods."""

    def __init__(self, url: str, name: str, protocol: str = "http", *,
                 timeout: float = 120.0, model_version: str = ""):
        _check_arguments(url, name, timeout, model_version)
        self._module, self._server_error = _import(protocol)
        self.url, self.name, self.protocol, self.model_version = url, name, protocol, model_version
        self.timeout = float(timeout)
        self._owner, self._closed = threading.get_ident(), False
        options = {"network_timeout": self.timeout, "connection_timeout": self.timeout} if protocol == "http" else {}
        self._client = self._module.InferenceServerClient(url, **options)
        try:
            config = self._plain(self._request(self._client.get_model_config, name, model_version,
                                               what=f"the config of model {name!r}"))
        except TritonRequestError:
            self.close()
            raise
        config = config.get("config", config)  # gRPC's response wraps it
        self.config = config
        self.parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        if "task" not in self.parameters:
            self.close()
            raise TritonRequestError(f"model {name!r} at {url} was not written by mbert-export triton (no task "
                                     "parameter in its config)")
        if RESULT not in {o.get("name") for o in config.get("output", [])}:
            self.close()
            raise TritonRequestError(f"model {name!r} at {url} is a step of an ensemble (it does not return "
                                     f"{RESULT}); call the ensemble, e.g. {name.rsplit('_', 1)[0]!r}")
        self.task = get_task(self.parameters["task"])
        self.max_batch = int(config.get("max_batch_size") or 1)
        self.input_names = {i["name"] for i in config.get("input", [])}
        self.methods = tuple(m for m in self.task.methods if set(self._required(m)) <= self.input_names)

    def __repr__(self) -> str:
        return f"TritonMegatronBert({self.url!r}, {self.name!r}, protocol={self.protocol!r}, task={self.task.name!r})"

    @property
    def client(self):
        """tritonclient's client; over HTTP only in the thread that made this object (it is not thread-safe,
        and a call from another thread could hang for good inside it)."""
        if self._closed:
            raise TritonRequestError(f"this client of model {self.name!r} at {self.url} was closed; make a new one")
        if self.protocol == "http" and threading.get_ident() != self._owner:
            raise RuntimeError("a TritonMegatronBert over HTTP belongs to the thread that made it (tritonclient's "
                               "HTTP client is not thread-safe): make one per thread, or use protocol='grpc', "
                               "whose client threads may share")
        return self._client

    def _request(self, call: Callable, *args, what: str, **kwargs) -> Any:
        """`call` with the timeout; server errors, timeouts and a missing server as `TritonRequestError`."""
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        try:
            return call(*args, **kwargs)
        except self._server_error as exc:
            message = exc.message() or str(exc)
            if "Deadline Exceeded" in message or "DEADLINE_EXCEEDED" in str(exc.status()):
                raise TritonRequestError(self._late(what)) from None
            raise TritonRequestError(message if what == "infer" else f"cannot read {what} at {self.url}: {message}") \
                from None
        except TimeoutError:
            raise TritonRequestError(self._late(what)) from None
        except _CONNECTION_ERRORS as exc:
            raise TritonRequestError(_unreachable(self.url, self.protocol, exc)) from exc
        except ValueError as exc:
            if self.protocol == "http" and type(exc).__name__ == "JSONDecodeError":  # an answer not Triton's JSON
                raise TritonRequestError(_unreachable(self.url, self.protocol, exc)) from exc
            raise

    def _late(self, what: str) -> str:
        asked = f"from model {self.name!r}" if what == "infer" else f"for {what}"
        return (f"no answer at {self.url} {asked} within timeout={self.timeout:g} s; is the server overloaded? "
                "pass a larger timeout")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _required(method: str) -> list[str]:
        return [n for a, n in METHOD_INPUTS[method].items() if (method, a) not in OPTIONAL_ARGUMENTS]

    def _plain(self, response: Any) -> dict[str, Any]:
        """A server response as a dict, the same over both protocols."""
        return response if self.protocol == "http" else _message_dict(response)

    def ready(self) -> bool:
        """Whether the model is ready; False also when the server does not answer."""
        client = self.client
        try:
            return bool(self._request(client.is_model_ready, self.name, self.model_version,
                                      what="the model's readiness"))
        except TritonRequestError:
            return False

    def statistics(self) -> dict[str, Any]:
        """The server's statistics of this model (counts, times, `batch_stats` per executed batch size)."""
        stats = self._plain(self._request(self.client.get_inference_statistics, self.name, self.model_version,
                                          what=f"the statistics of model {self.name!r}"))
        models = stats.get("model_stats", [])
        return models[0] if models else {}

    def batch_sizes(self) -> dict[int, int]:
        """Executed batch size -> how many times, from the server's statistics."""
        return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in self.statistics().get("batch_stats", [])}

    # ------------------------------------------------------------------ requests
    def _rows(self, method: str, arguments: dict[str, Any]) -> tuple[dict[str, list[str]], bool]:
        """Input tensor name -> one string per row, and whether the call was for a single item."""
        columns: dict[str, list[str]] = {}
        single = None
        for argument, name in METHOD_INPUTS[method].items():
            value = arguments.pop(argument, None)
            if value is None and (method, argument) in OPTIONAL_ARGUMENTS:
                continue
            if value is None:  # the in-process method's own refusal
                MegatronBertPipeline._texts(value, argument)
            if name in JSON_INPUTS:  # a list per row (multiple choice)
                if single and not isinstance(value, (list, tuple)):  # the in-process method's refusals
                    MegatronBertPipeline._texts(value, argument)
                    raise ValueError(f"{method}() needs at least two choices")
                rows = [value] if single else value
                if not isinstance(rows, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in rows):
                    raise ValueError("with a list of prompts, choices must be a list of choice lists, one per prompt")
                texts = [json.dumps(list(r)) for r in rows]
            else:
                texts, is_single = MegatronBertPipeline._texts(value, argument)
                single = is_single if single is None else single
                if is_single != single:
                    raise ValueError(f"{argument} must match the first texts: a str for a str, a list for a list")
            if columns and len(texts) != len(next(iter(columns.values()))):
                raise ValueError(f"{argument} must match the first texts: a list of the same length "
                                 f"({len(next(iter(columns.values())))})")
            columns[name] = texts
        return columns, bool(single)

    def _infer(self, columns: dict[str, list[str]], parameters: dict[str, str], single: bool) -> list[Any]:
        rows = len(next(iter(columns.values())))
        results: list[Any] = []
        for start in range(0, rows, self.max_batch):
            inputs = []
            for name, texts in columns.items():
                data = np.array([[t.encode("utf-8")] for t in texts[start:start + self.max_batch]], dtype=np.object_)
                tensor = self._module.InferInput(name, list(data.shape), "BYTES")
                tensor.set_data_from_numpy(data)
                inputs.append(tensor)
            outputs = [self._module.InferRequestedOutput(RESULT)]
            try:
                reply = self._request(self.client.infer, self.name, inputs, model_version=self.model_version,
                                      outputs=outputs, parameters=parameters, what="infer")
            except TritonRequestError as exc:  # rows as the caller counts them, not as this piece does
                message = _ROW_REFERENCE.sub(
                    lambda m: m.group(1) if single else f"{m.group(1)}[{int(m.group(2)) + start}]", str(exc))
                message = _INPUT_ROW.sub(lambda m: f"input {int(m.group(1)) + start}", message)
                raise TritonRequestError(message) from None
            results += [json.loads(r[0]) for r in reply.as_numpy(RESULT)]
        return results

    def _call(self, method: str, *args, **kwargs):
        if method not in self.methods:
            raise wrong_task_error(method, self.task.name, self.methods, f"model {self.name!r} at {self.url}")
        bound = _signature(method).bind(None, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self")
        columns, single = self._rows(method, arguments)
        parameters = {METHOD: method}
        for option, value in arguments.items():
            try:
                parameters[option] = encode_option(value)
            except (TypeError, ValueError):
                raise TypeError(f"{method}() option {option}={value!r}: a {type(value).__name__} cannot be sent to "
                                "the server; pass a str, number, bool, None or a list of them") from None
        results = self._infer(columns, parameters, single)
        if method == "embed":
            vectors = np.asarray(results, dtype=np.float32)
            return vectors[0] if single else vectors
        return results[0] if single else results


@functools.lru_cache(maxsize=None)
def _signature(method: str) -> inspect.Signature:
    return inspect.signature(getattr(MegatronBertPipeline, method))


def _client_method(method: str):
    target = getattr(MegatronBertPipeline, method)

    @functools.wraps(target)
    def call(self, *args, **kwargs):
        return self._call(method, *args, **kwargs)

    return call


for _method in METHOD_INPUTS:
    setattr(TritonMegatronBert, _method, _client_method(_method))
