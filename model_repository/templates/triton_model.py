"""What the Triton Python-backend models share: their config.pbtxt read once, and the per-request
judgement of the models that judge images (postprocess, and calibrate in the fused layout).

Copied beside each model.py at build time, as `line_metrics.py` (Triton puts the version folder
on sys.path). `Judge` holds the scoring record this version serves (the config parameter's, or
the version folder's calibration.json: `served_calibration.py`) and the line metrics when the
build turned them on; `Judge.respond` turns one request's raw image scores into its one
response: its parameters, `scoring.judge_request`, `LineMetrics.observe`, then the model's own
output tensors, or that request's own error (an unknown product, a malformed threshold) with
the invalid-argument code: Triton answers it as HTTP 400 and gRPC INVALID_ARGUMENT (measured with
the embedded 2.51, also through the ensemble). The code argument exists since Triton 23.09
(python_backend README, "Error Handling"; PR #300), older than any release dcam serves on.
Every tensor in and out of a Python model goes through `input_array` and `output_tensor`.
"""

import json
import os

import drift
import line_metrics
import numpy as np
import scoring
import served_calibration
import triton_python_backend_utils as pb_utils

# How numpy arrays cross the Python backend's stub, by numpy's major version (measured with the
# embedded 2.51 stub, docs/serving.md "Pythons and numpy"). Its pybind11 predates numpy 2's array
# descriptor: under numpy 2, `as_numpy()` reads zeros and `pb_utils.Tensor(name, array)` sends 0
# bytes, while DLPack carries both ways correctly. Under numpy 1 the plain route works and DLPack
# from numpy leaves the stub unhealthy (its renamed capsule fails numpy 1's deleter).
VIA_DLPACK = int(np.__version__.split(".")[0]) >= 2


def input_array(request, name):
    """A request's input tensor as a numpy array on the host."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return np.from_dlpack(tensor) if VIA_DLPACK else tensor.as_numpy()


def output_tensor(name, value, dtype):
    """A numpy value as the output tensor `name` of type `dtype`, contiguous as Triton needs."""
    array = np.ascontiguousarray(value, dtype=dtype)
    return pb_utils.Tensor.from_dlpack(name, array) if VIA_DLPACK else pb_utils.Tensor(name, array)


def read_config(args):
    """The model's config.pbtxt as a dict, and its parameters as {name: string value}."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    return config, params


def output_dtypes(config):
    """{output name: numpy dtype} from the config's outputs."""
    return {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}


class Judge:
    def __init__(self, args, config, params):
        """The scoring record this version serves, and the line metrics when the build wrote
        the drift rule (`--no-line-metrics` leaves it out).

        A calibration.json in the version folder replaces the config's record; one from
        another build or with another rule raises, so that version fails to load and Triton
        keeps serving the one before."""
        base = scoring.ScoringSpec.from_json(params[scoring.SCORING_PARAMETER])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        build_id = params.get(served_calibration.BUILD_ID_PARAMETER)
        self.spec = served_calibration.served_spec(version_dir, base, build_id)
        self.version = int(args["model_version"])
        self.metrics = None
        if drift.DRIFT_PARAMETER in params:
            spec = drift.DriftSpec.from_json(params[drift.DRIFT_PARAMETER])
            self.metrics = line_metrics.LineMetrics(
                spec, self.spec, config, args["model_instance_name"]
            )

    def respond(self, request, raw, tensors):
        """One response per request: its raw scores under its product's calibration and
        threshold, observed by the line metrics, and `tensors(score, decision)` as outputs; or
        the request's own error."""
        try:
            params = json.loads(request.parameters() or "{}")
            score, decision = scoring.judge_request(self.spec, raw, params)
        except ValueError as exc:  # the request's own fault: HTTP 400, gRPC INVALID_ARGUMENT
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        if self.metrics is not None:
            self.metrics.observe(scoring.request_category(params), score, decision)
        return pb_utils.InferenceResponse(output_tensors=tensors(score, decision))

    def versions(self, n):
        """This version, the calibration that decided them, for each of `n` images."""
        return np.full((n, 1), self.version, dtype=np.int64)

    def publish(self):
        """Send the batch's line metrics, when the model has them."""
        if self.metrics is not None:
            self.metrics.publish()
