"""dcam.build: a training run (weights + manifest.json) in, a Triton model repository out.

ONNX export with the preprocessing folded in, onnxsim, numerical parity against PyTorch, FP16
TensorRT engines (GPU) or ONNX Runtime (CPU), generated Triton configs (`dcam-build engines`),
and `dcam-build verify` against the real tritonserver.
"""
