"""Triton Python-backend decision step of the fused layout: normalised score in, decision out.

The fused graph (ONNX Runtime on the CPU, a TensorRT plan on the GPU) computes the anomaly map
and the normalised score; a TensorRT plan cannot read request parameters, so this step applies
the calibrated threshold, or the request's `threshold` parameter (Triton forwards an ensemble's
request parameters to its steps), with `scoring.py` copied beside this file: the parameter
works in every layout. Names, types and the scoring record come from config.pbtxt.
"""

import json

import scoring
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.threshold = scoring.ScoringSpec.from_json(params["scoring"]).calibration.threshold
        self.score_input = config["input"][0]["name"]
        output = config["output"][0]
        self.decision_output = output["name"]
        self.dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        """One response per request: its own threshold, or its own error."""
        try:
            asked = scoring.request_threshold(json.loads(request.parameters() or "{}"))
        except ValueError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        score = pb_utils.get_input_tensor_by_name(request, self.score_input).as_numpy()
        decision = scoring.decide(score, self.threshold if asked is None else asked)
        tensor = pb_utils.Tensor(self.decision_output, decision.astype(self.dtype))
        return pb_utils.InferenceResponse(output_tensors=[tensor])
