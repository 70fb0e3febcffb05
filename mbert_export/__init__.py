"""mbert-export: deploy MegatronBERT checkpoints as ONNX graphs and TensorRT engines.

Data flow (one module per stage): checkpoints -> modeling -> export -> precision -> build -> runtime.
The torch-free parts (``tasks``, ``tokenization``, ``runtime``) can be imported in a deployment image
without torch or transformers, so this package root imports nothing heavy.
"""

__version__ = "0.1.0"
