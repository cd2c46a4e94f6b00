"""Triton Python-backend calibration step of the fused layout: raw score in, score and decision out.

The fused graph (ONNX Runtime on the CPU, a TensorRT plan on the GPU) computes the anomaly map
and the raw image score; a TensorRT plan cannot read request parameters, so this step applies
the calibration of the product the request's `category` parameter names (the global one without
it) and the calibrated threshold or the request's `threshold` (Triton forwards an ensemble's
request parameters to its steps), with `scoring.py` copied beside this file: the same rule and
parameters as the ensemble layout's post-processing. Names, types and the scoring record come
from config.pbtxt. Each product's counts, scores and drift go to Triton's metrics port
(`line_metrics.py`), when the build turned them on.
"""

import json

import drift
import line_metrics
import numpy as np
import scoring
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.spec = scoring.ScoringSpec.from_json(params[scoring.SCORING_PARAMETER])
        self.raw_input = config["input"][0]["name"]
        self.score_output, self.decision_output = params["score_output"], params["decision_output"]
        self.dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]
        }
        self.metrics = None
        if drift.DRIFT_PARAMETER in params:
            spec = drift.DriftSpec.from_json(params[drift.DRIFT_PARAMETER])
            self.metrics = line_metrics.LineMetrics(
                spec, self.spec, config, args["model_instance_name"]
            )

    def execute(self, requests):
        responses = [self._respond(request) for request in requests]
        if self.metrics is not None:
            self.metrics.publish()
        return responses

    def _respond(self, request):
        """One response per request: its product's calibration and threshold, or its error."""
        raw = pb_utils.get_input_tensor_by_name(request, self.raw_input).as_numpy()
        try:
            params = json.loads(request.parameters() or "{}")
            score, decision = scoring.judge_request(self.spec, raw, params)
        except ValueError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if self.metrics is not None:
            self.metrics.observe(scoring.request_category(params), score, decision)
        outputs = {self.score_output: score, self.decision_output: decision}
        tensors = [
            pb_utils.Tensor(n, np.asarray(v).astype(self.dtypes[n], copy=False))
            for n, v in outputs.items()
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)
