"""Serving with NVIDIA Triton Inference Server: a model repository writer, a local server, a client.

    mbert-export triton engines/mlm-int8 --repository repo           # write a model repository
    mbert-export serve engines/mlm-int8                              # ... and run tritonserver on it

    from mbert_export.serving import TritonMegatronBert
    TritonMegatronBert("localhost:8000", "mlm-int8").fill_mask("Paris is the [MASK] of France.")

`interface` is the one request/response contract, `repository` writes configs and model folders,
`triton_models` are the python-backend models inside the repository, `server` starts tritonserver,
`client` has the runtime's task methods. Torch-free; tritonclient is imported by the client only.
"""

__all__ = ["TritonMegatronBert", "TritonRequestError", "write_repository", "start_server", "TritonServer"]


def __getattr__(name):  # lazy: the python models import this package inside tritonserver
    if name in ("TritonMegatronBert", "TritonRequestError"):
        from . import client

        return getattr(client, name)
    if name == "write_repository":
        from .repository import write_repository

        return write_repository
    if name in ("start_server", "TritonServer"):
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
