"""TEST STAND-IN for Triton's onnxruntime_onnx backend (which only NVIDIA's container has).

A python-backend model that runs the same model.onnx with ONNX Runtime under the same config
(same name, inputs, outputs, max_batch_size, dynamic batching); the ensemble tests swap
`platform: "onnxruntime_onnx"` for `backend: "python"` and put this file in as model.py.
"""

import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], str(args["model_version"]))
        self.session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"),
                                                    providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.largest_batch = 0

    def execute(self, requests):
        # One session call for the whole dynamic batch, as the real backend does.
        feeds = {n: [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for r in requests] for n in self.inputs}
        rows = [f.shape[0] for f in feeds[self.inputs[0]]]
        outputs = self.session.run(self.outputs, {n: np.concatenate(v) for n, v in feeds.items()})
        responses, start = [], 0
        for count in rows:
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(o[start:start + count]))
                       for n, o in zip(self.outputs, outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses
