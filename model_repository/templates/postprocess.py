"""Triton Python-backend post-processing: teacher and student features in, anomaly map out.

A thin adapter, as python_backend's add_sub example: tensor names, types and the scoring record
come from config.pbtxt (written by dcam-build); the maths is `scoring.py` and `anomaly_map.py`,
copied beside this file at build time (Triton puts the version folder on sys.path), the same
rule training evaluates with. On the CPU it runs in numpy and never imports torch. With GPU
inputs (FORCE_CPU_ONLY_INPUT_TENSORS "no") every tensor goes through DLPack and torch, in FP32,
wherever Triton placed it: torch is imported and the rule's constant matrices are put on the
device in `initialize` (a container without torch fails the load, saying so), and a batch whose
inputs Triton placed partly in host memory is moved to the device whole. Outputs leave through
DLPack too. Stock `-py3` images have no torch: this path needs the image that
deploy/images/torch-postprocess.Dockerfile derives (the fused layout needs none).
Each request is normalised with the calibration of the product its `category` parameter
names (the global one without it; an unknown name is that request's error), and its
`threshold` parameter overrides the calibrated threshold. Each product's counts, scores and
drift go to Triton's metrics port (`line_metrics.py`), when the build turned them on: that
judgement and the metrics are `triton_model.py`'s, shared with the fused layout's calibrate.
Each image's `calibration_version` is this model's version (the calibration that decided it),
a host numpy array on both paths.
"""

import functools

import batching
import numpy as np
import scoring
import triton_model
import triton_python_backend_utils as pb_utils

try:  # BLAS threads that spin beside busy ONNX Runtime/TensorRT instances cost 50x here
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None


def _import_torch():
    try:
        import torch
        import torch.utils.dlpack
    except ImportError as exc:
        raise RuntimeError(
            "postprocess takes GPU inputs (FORCE_CPU_ONLY_INPUT_TENSORS is 'no') and needs "
            "PyTorch, which this Triton container lacks: derive an image with "
            "deploy/images/torch-postprocess.Dockerfile, or build with --layout fused (the "
            "stock -py3 image serves it)"
        ) from exc
    return torch


def _to_array(request, name, torch):
    """numpy on the CPU path; with torch, DLPack whatever the tensor's memory (no copy)."""
    if torch is None:
        return triton_model.input_array(request, name)
    return torch.from_dlpack(pb_utils.get_input_tensor_by_name(request, name).to_dlpack())


def _to_tensor(name: str, value, dtype, torch):
    if isinstance(value, np.ndarray):
        return triton_model.output_tensor(name, value, dtype)
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(value.contiguous()))


class TritonPythonModel:
    def initialize(self, args):
        config, params = triton_model.read_config(args)
        self.judge = triton_model.Judge(args, config, params)
        self.teacher = params["teacher_inputs"].split(",")
        self.student = params["student_inputs"].split(",")
        self.roles = {
            "maps": params["map_output"],
            "score": params["score_output"],
            "decision": params["decision_output"],
            "version": params["version_output"],
        }
        self.dtypes = triton_model.output_dtypes(config)
        self.torch = None
        if params.get("FORCE_CPU_ONLY_INPUT_TENSORS", "yes") == "no":
            self.torch = _import_torch()
            gpu = args["model_instance_kind"] == "GPU"
            device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
            shapes = [
                [int(d) for d in pb_utils.get_input_config_by_name(config, n)["dims"]]
                for n in self.teacher
            ]
            scoring.warm_up(self.judge.spec, shapes, device)  # matrices there before capture
        if threadpool_limits is not None:
            self._blas = threadpool_limits(int(params.get("blas_threads", "1")), user_api="blas")
        else:
            pb_utils.Logger.log_warn(
                "threadpoolctl is missing: set OPENBLAS_NUM_THREADS=1 for this server, or the "
                "post-processing maths slows down badly while the other models are busy"
            )

    def execute(self, requests):
        names = self.teacher + self.student
        try:
            per_request = batching.on_one_device(
                [[_to_array(r, n, self.torch) for n in names] for r in requests]
            )
            batch = batching.join(per_request)
            k = len(self.teacher)
            scored = scoring.score(self.judge.spec, batch[:k], batch[k:])
        except Exception as exc:  # a failed batch answers every request with the error
            error = pb_utils.TritonError(f"post-processing failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        parts = batching.split(
            {"maps": scored.maps, "raw": scored.raw}, batching.sizes(per_request)
        )
        responses = [
            self.judge.respond(r, part.pop("raw"), functools.partial(self._tensors, part))
            for r, part in zip(requests, parts, strict=True)
        ]
        self.judge.publish()
        return responses

    def _tensors(self, part, score, decision):
        """A request's slice of the map with its score, decision and calibration version, as
        output tensors."""
        part.update(
            score=score[:, None],
            decision=decision[:, None],
            version=self.judge.versions(len(score)),
        )
        return [
            _to_tensor(self.roles[role], value, self.dtypes[self.roles[role]], self.torch)
            for role, value in part.items()
        ]
