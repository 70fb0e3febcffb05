"""Load, convert and merge checkpoints: the first stage of the data flow.

The parts:

- `hf`: Hugging Face folders (safetensors, sharded safetensors, pytorch_model.bin and its shards) and
  the streaming, atomic `model.safetensors` writer.
- `unpickle`: the safe unpickler, the one allow-list of what a checkpoint pickle may contain
  (`safe_torch_load`, torch_dist `.metadata` and byte items).
- `layout`: where a Megatron checkpoint's files are (NGC zip, tracker, iteration / release folders,
  the `mp_rank_XX[_YYY]` grid, a torch_dist folder).
- `legacy`, `mcore`, `torch_dist`: the name mapping of each layout (legacy Megatron-LM; Megatron-Core
  `torch` files; Megatron-Core `torch_dist` with stacked per-layer tensors).
- `merge`: pipeline stages joined, tensor-parallel shards merged lazily.
- `args`: hyper-parameters and GELU flavours from the training args; unsupported features refused.
- `convert`: `convert_megatron`, which ties them together.

Every bad input raises `CheckpointError` naming the file, the problem and the fix; conversion writes
its output folder atomically, so a failure leaves nothing behind.
"""

from .convert import NGC_VOCAB_SIZES, convert_megatron
from .errors import CheckpointError, Progress
from .hf import (MEGATRON_CHECKPOINT_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, TRACKER_NAME, WEIGHTS_INDEX_NAME,
                 WEIGHTS_NAME, load_hf_state_dict, save_hf_state_dict)
from .merge import QKV_LAYOUTS
from .unpickle import PickledStub, safe_torch_load

__all__ = ["CheckpointError", "MEGATRON_CHECKPOINT_NAME", "NGC_VOCAB_SIZES", "PickledStub", "Progress", "QKV_LAYOUTS",
           "SAFE_WEIGHTS_INDEX_NAME", "SAFE_WEIGHTS_NAME", "TRACKER_NAME", "WEIGHTS_INDEX_NAME", "WEIGHTS_NAME",
           "convert_megatron", "load_hf_state_dict", "safe_torch_load", "save_hf_state_dict"]
