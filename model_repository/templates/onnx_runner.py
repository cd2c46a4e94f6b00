"""Triton Python-backend model that runs an ONNX graph with ONNX Runtime on the CPU.

The embedded tritonserver has no ONNX Runtime backend, so the CPU target serves the teacher, the
student and the fused graph through this file. Requests that dynamic batching hands over together
run as one batch. Tensor names and types come from config.pbtxt (written by dcam-build), with
the parameter intra_op_threads. A failed batch answers each of its requests with the error.
"""

import os

import batching
import onnxruntime as ort
import triton_model
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config, params = triton_model.read_config(args)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        opts.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.dtypes = triton_model.output_dtypes(config)

    def execute(self, requests):
        names = list(self.dtypes)
        try:
            per_request = [[triton_model.input_array(r, n) for n in self.inputs] for r in requests]
            feed = dict(zip(self.inputs, batching.join(per_request), strict=True))
            results = self.session.run(names, feed)
        except Exception as exc:  # a failed batch answers every request with the error
            error = pb_utils.TritonError(f"ONNX Runtime failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        outputs = dict(zip(names, results, strict=True))
        parts = batching.split(outputs, batching.sizes(per_request))
        return [self._respond(part) for part in parts]

    def _respond(self, part):
        tensors = [triton_model.output_tensor(n, v, self.dtypes[n]) for n, v in part.items()]
        return pb_utils.InferenceResponse(output_tensors=tensors)
