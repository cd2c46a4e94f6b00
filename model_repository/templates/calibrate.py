"""Triton Python-backend calibration step of the fused layout: raw score in, score and decision out.

The fused graph (ONNX Runtime on the CPU, a TensorRT plan on the GPU) computes the anomaly map
and the raw image score; a TensorRT plan cannot read request parameters, so this step applies
the calibration of the product the request's `category` parameter names (the global one without
it) and the calibrated threshold or the request's `threshold` (Triton forwards an ensemble's
request parameters to its steps), with `scoring.py` copied beside this file: the same rule and
parameters as the ensemble layout's post-processing. Each image's `calibration_version` is this
model's version: which calibration decided it. Names, types and the scoring record come from
config.pbtxt (or the version folder's calibration.json); the judgement and the line metrics are
`triton_model.py`'s, shared with it.
"""

import triton_model


class TritonPythonModel:
    def initialize(self, args):
        config, params = triton_model.read_config(args)
        self.judge = triton_model.Judge(args, config, params)
        self.raw_input = config["input"][0]["name"]
        self.score_output, self.decision_output = params["score_output"], params["decision_output"]
        self.version_output = params["version_output"]
        self.dtypes = triton_model.output_dtypes(config)

    def execute(self, requests):
        responses = [
            self.judge.respond(r, triton_model.input_array(r, self.raw_input), self._tensors)
            for r in requests
        ]
        self.judge.publish()
        return responses

    def _tensors(self, score, decision):
        outputs = {
            self.score_output: score,
            self.decision_output: decision,
            self.version_output: self.judge.versions(len(score)),
        }
        return [triton_model.output_tensor(n, v, self.dtypes[n]) for n, v in outputs.items()]
