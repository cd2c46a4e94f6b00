"""`dcam-build engines --target onnx`: configs for Triton's native ONNX Runtime backend, which
the embedded server lacks. Checked through Triton's protobuf field by field, and against the
graph itself the way the backend checks a config (its inputs and outputs must match the model's),
with onnxruntime reading each model.onnx."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from dcam.build.config import BuildConfig
from dcam.build.engines import build_repository
from dcam.core.errors import ConfigError, ServerError
from dcam.serve.compat import read_configs
from dcam.serve.server import ServerConfig, TritonServer

ORT_TYPES = {"tensor(uint8)": mc.TYPE_UINT8, "tensor(float)": mc.TYPE_FP32}


def _config(repo: Path, model: str) -> mc.ModelConfig:
    return read_configs(repo)[model]


def _build(run: Path, out: Path, **options) -> Path:
    build_repository(BuildConfig(run_dir=str(run), out=str(out), target="onnx", **options))
    return out


def _matches_graph(repo: Path, model: str) -> None:
    """What the ONNX Runtime backend enforces at load: every config input and output exists in
    the graph with its type and its dims after the batch dimension."""
    config = _config(repo, model)
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"))
    graph = {t.name: t for t in [*session.get_inputs(), *session.get_outputs()]}
    for tensor in [*config.input, *config.output]:
        assert tensor.name in graph, (model, tensor.name, list(graph))
        assert ORT_TYPES[graph[tensor.name].type] == tensor.data_type, (model, tensor.name)
        assert list(graph[tensor.name].shape[1:]) == list(tensor.dims), (model, tensor.name)


def test_onnx_target_on_the_cpu(tiny_run: Path, tmp_path: Path) -> None:
    repo = _build(tiny_run, tmp_path / "onnx")
    for role in ("teacher", "student"):
        config = _config(repo, role)
        assert config.platform == "onnxruntime_onnx" and not config.backend
        assert config.default_model_filename == "model.onnx"
        assert not (repo / role / "1" / "model.py").exists()  # no Python runner
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert int(config.parameters["intra_op_thread_count"].string_value) >= 1
        assert not config.optimization.execution_accelerators.gpu_execution_accelerator
        assert config.dynamic_batching.default_queue_policy.default_timeout_microseconds > 0
        _matches_graph(repo, role)
    post = _config(repo, "postprocess")
    assert post.backend == "python"
    assert post.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "yes"
    # The embedded server has no ONNX Runtime backend: it says so instead of failing to load.
    with pytest.raises(ServerError, match="ONNX Runtime backend"):
        TritonServer(ServerConfig(repo)).start()


def test_onnx_target_with_tensorrt_accelerator(tiny_run: Path, tmp_path: Path) -> None:
    repo = _build(tiny_run, tmp_path / "onnx-trt", layout="fused", onnx_accelerator="tensorrt")
    fused = _config(repo, "fused")
    assert fused.platform == "onnxruntime_onnx"
    assert fused.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    (accelerator,) = fused.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_engine_cache_enable"] == "1"
    assert accelerator.parameters["trt_engine_cache_path"] == BuildConfig.onnx_engine_cache
    assert int(accelerator.parameters["max_workspace_size_bytes"]) == 4096 << 20
    assert "intra_op_thread_count" not in fused.parameters  # threads do not apply on the GPU
    _matches_graph(repo, "fused")
    calibrate = _config(repo, "calibrate")  # a few numbers per image: stays on the CPU
    assert calibrate.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_accelerator_needs_the_onnx_target() -> None:
    with pytest.raises(ConfigError, match="--target onnx"):
        BuildConfig(run_dir="", out="", target="cpu", onnx_accelerator="tensorrt")
