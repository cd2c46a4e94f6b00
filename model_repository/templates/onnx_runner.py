"""Triton Python-backend model that runs an ONNX graph with ONNX Runtime on the CPU.

The embedded tritonserver has no ONNX Runtime backend, so the CPU target serves the teacher, the
student and the fused graph through this file. Requests that dynamic batching hands over together
run as one batch. Parameters (from config.pbtxt, written by dcam-build): intra_op_threads, and for
the fused graph score_output/decision_output, so a request parameter `threshold` can override the
decision threshold as it can in the ensemble.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _params(config: dict) -> dict:
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def _threshold(request) -> float | None:
    value = json.loads(request.parameters() or "{}").get("threshold")
    return None if value is None else float(value)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.params = _params(config)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(self.params.get("intra_op_threads", "0"))
        opts.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        arrays = [
            [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs]
            for r in requests
        ]
        feed = {n: np.concatenate([a[i] for a in arrays]) for i, n in enumerate(self.inputs)}
        try:
            results = self.session.run(self.outputs, feed)
        except Exception as exc:  # one failed batch answers every request with the error
            error = pb_utils.TritonError(f"ONNX Runtime failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for request, inputs in zip(requests, arrays, strict=True):
            stop = start + inputs[0].shape[0]
            outs = {n: r[start:stop] for n, r in zip(self.outputs, results, strict=True)}
            self._override_decision(request, outs)
            tensors = [pb_utils.Tensor(n, v) for n, v in outs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses

    def _override_decision(self, request, outs: dict) -> None:
        score, decision = self.params.get("score_output"), self.params.get("decision_output")
        threshold = _threshold(request) if score and decision else None
        if threshold is not None:
            outs[decision] = outs[score] > threshold
