"""Triton Python-backend post-processing: teacher and student features in, anomaly map out.

A thin adapter: the maths is `anomaly_map.py`, copied beside this file at build time (Triton puts
the version folder on sys.path), the same module training evaluates with. On the CPU it runs in
numpy; with GPU inputs (FORCE_CPU_ONLY_INPUT_TENSORS off) it stays on the device through DLPack
and torch, in FP32. Outputs: anomaly_map, score (normalised with the manifest's statistics) and
is_anomalous (the manifest's threshold, or the request parameter `threshold`).
"""

import json

import anomaly_map as amap
import numpy as np
import triton_python_backend_utils as pb_utils

try:  # BLAS threads that spin beside busy ONNX Runtime/TensorRT instances cost 50x here
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None


def _to_array(tensor):
    if tensor.is_cpu():
        return tensor.as_numpy()
    import torch

    return torch.from_dlpack(tensor.to_dlpack())


def _to_tensor(name: str, value):
    if isinstance(value, np.ndarray):
        return pb_utils.Tensor(name, value)
    import torch.utils.dlpack

    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(value.contiguous()))


def _concat(parts):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.teacher = p["teacher_inputs"].split(",")
        self.student = p["student_inputs"].split(",")
        self.size = (int(p["height"]), int(p["width"]))
        self.combine, self.sigma = p["combine"], float(p["sigma"])
        self.mean, self.std = float(p["score_mean"]), float(p["score_std"])
        self.threshold = float(p["threshold"])
        blas_threads = int(p.get("blas_threads", "1"))
        if threadpool_limits is not None:
            self._blas = threadpool_limits(limits=blas_threads, user_api="blas")
        else:
            pb_utils.Logger.log_warn(
                "threadpoolctl is missing: set OPENBLAS_NUM_THREADS=1 for this server, or the "
                "post-processing maths slows down badly while the other models are busy"
            )

    def execute(self, requests):
        names = self.teacher + self.student
        per_request = [
            [_to_array(pb_utils.get_input_tensor_by_name(r, n)) for n in names] for r in requests
        ]
        batch = [_concat([arrays[i] for arrays in per_request]) for i in range(len(names))]
        k = len(self.teacher)
        maps = amap.anomaly_map(batch[:k], batch[k:], self.size, self.combine, self.sigma)
        scores = amap.normalise_scores(amap.image_scores(maps), self.mean, self.std)[:, None]
        responses, start = [], 0
        for request, arrays in zip(requests, per_request, strict=True):
            stop = start + arrays[0].shape[0]
            params = json.loads(request.parameters() or "{}")
            threshold = float(params.get("threshold", self.threshold))
            outs = {
                "anomaly_map": maps[start:stop],
                "score": scores[start:stop],
                "is_anomalous": amap.decide(scores[start:stop], threshold),
            }
            tensors = [_to_tensor(n, v) for n, v in outs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses
