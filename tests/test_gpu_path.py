"""The GPU path's defects, each checked here without a GPU: what the code consumes (configs,
graphs, Triton's model loading, the API rules) is real; only the CUDA device is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dcam.build import plans, trt
from dcam.build.config import BuildConfig
from dcam.build.parity import onnxruntime_session, parity_images
from dcam.build.verify import infer, reference_outputs, verify_repository
from dcam.core import batching
from dcam.core.errors import BuildError
from dcam.core.manifest import Manifest
from dcam.serve.server import ServerConfig, TritonServer


def test_mixed_host_and_device_inputs_are_moved_to_one_device() -> None:
    """Defect 3: some inputs as tensors (DLPack), others as numpy (pinned host fallback)."""
    per_request = [
        [np.ones((1, 4, 2, 2), np.float32), torch.zeros(1, 4, 2, 2)],
        [torch.ones(2, 4, 2, 2), np.zeros((2, 4, 2, 2), np.float32)],
    ]
    moved = batching.on_one_device(per_request)
    assert all(isinstance(a, torch.Tensor) for arrays in moved for a in arrays)
    joined = batching.join(moved)
    assert [tuple(a.shape) for a in joined] == [(3, 4, 2, 2), (3, 4, 2, 2)]
    numpy_only = batching.on_one_device([[np.ones(1)]])
    assert isinstance(numpy_only[0][0], np.ndarray)  # CPU serving stays numpy


@pytest.mark.triton
def test_gpu_input_configuration_serves_the_reference(gpu_input_repo: Path, tiny_run: Path) -> None:
    """The torch path of postprocess gives the reference scores: every input arrives through
    `to_dlpack`/`torch.from_dlpack` and every output leaves through `Tensor.from_dlpack`, as
    on a GPU, here on CPU memory in the real server."""
    repo = gpu_input_repo
    images = parity_images(64)["generated"]
    ref = reference_outputs(tiny_run, Manifest.read(tiny_run), images)
    with TritonServer(ServerConfig(repo)) as server:
        got = infer("grpc", server.grpc_url, images)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-4)


def test_timing_cache_persists_beside_the_output(tmp_path: Path) -> None:
    """Defect 7: the cache lived under the temporary build folder, a new name every build."""
    cfg = BuildConfig(run_dir="run", out=str(tmp_path / "repo"))
    assert cfg.timing_cache_path() == tmp_path / "repo.timing.cache"
    again = BuildConfig(run_dir="run", out=str(tmp_path / "repo"), force=True)
    assert again.timing_cache_path() == cfg.timing_cache_path()
    custom = BuildConfig(run_dir="run", out="o", timing_cache=str(tmp_path / "shared.cache"))
    assert custom.timing_cache_path() == tmp_path / "shared.cache"


@pytest.mark.skipif(not trt.missing_for_trt(), reason="TensorRT and a GPU are present")
def test_verify_on_a_tensorrt_repository_says_what_it_needs(trt_pod_repo: Path) -> None:
    """The embedded CPU server has no TensorRT backend; verify says so and what the plan check
    against the stored ONNX Runtime outputs needs, instead of failing to load the plans."""
    with pytest.raises(BuildError, match="no TensorRT backend") as info:
        verify_repository(trt_pod_repo)
    assert "ONNX Runtime FP32 outputs stored" in str(info.value)
    assert "a CUDA GPU" in str(info.value) and "build_plans.py" in str(info.value)


def test_the_fp16_reference_is_onnx_runtime_on_the_cpu(ensemble_repo: Path) -> None:
    """Plans are checked against ONNX Runtime FP32 on the CPU (stored with the build), which
    exists wherever the graphs are exported; never against a package nobody installs."""
    path = ensemble_repo / "teacher" / "1" / "model.onnx"
    assert onnxruntime_session(path).get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("capability", "fast"),
    [((9, 0), True), ((7, 5), True), ((6, 0), True), ((6, 1), False), ((5, 2), False)],
)
def test_fast_fp16_by_compute_capability(capability: tuple[int, int], fast: bool) -> None:
    """Defect 10: platform_has_fast_fp16 is deprecated in TensorRT 10."""
    assert trt.has_fast_fp16(capability) is fast


def test_trtexec_found_where_nvidia_containers_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 10: NVIDIA's containers keep trtexec in /usr/src/tensorrt/bin, off PATH."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    installed = tmp_path / "usr-src-tensorrt-bin" / "trtexec"
    monkeypatch.setattr(plans, "TRTEXEC_PATHS", (str(installed),))
    with pytest.raises(BuildError, match="neither on PATH"):
        trt.find_trtexec()
    installed.parent.mkdir()
    installed.write_text("#!/bin/sh\n")
    installed.chmod(0o755)
    assert trt.find_trtexec() == str(installed)
