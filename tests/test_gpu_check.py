"""benchmarks/gpu_check.py on the CPU: the smoke run as on the GPU machine, the row labels and
what they claim (TF32 flags, activation layout, floor ratio, input source), --out and the budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import gpu_floor  # noqa: E402

CPU = torch.device("cpu")


def smoke_run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """As on the GPU machine: a copy of the tree, dcam not installed (`-S` skips the editable
    install's .pth; site-packages is added by hand for torch and numpy) and no git on PATH."""
    out = tmp_path / "results" / "gpu.json"
    site = sysconfig.get_paths()["purelib"]
    argv = [str(BENCH / "gpu_check.py"), "--device", "cpu", "--smoke", "--out", str(out), *extra]
    code = (
        f"import runpy, sys; sys.path.append({site!r})\n"
        "try:\n    import dcam.core\n    raise SystemExit('dcam is importable without the tree')\n"
        "except ImportError:\n    pass\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    no_git = tmp_path / "bin"
    no_git.mkdir()
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": str(no_git)},
        cwd=tmp_path,
    )
    return result, out


def test_gpu_check_cpu_smoke_without_install_or_git(tmp_path: Path) -> None:
    result, out = smoke_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    rows = {(r["batch"], r["label"]): r for r in report["throughput"]}
    assert all("error" not in r for r in rows.values()), rows
    assert report["skipped"] == [] and report["commit"] == "unknown (no git)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "results"]  # nothing in cwd

    fp32, tf32 = rows[1, "fp32/as-exported/device"], rows[1, "tf32/as-exported/device"]
    assert (fp32["tf32_matmul"], fp32["tf32_cudnn"]) == (False, False)
    assert (tf32["tf32_matmul"], tf32["tf32_cudnn"]) == (True, True)
    # the graph's permute of the NHWC input already gives channels-last activations
    assert fp32["act_first_conv"] == "channels_last" and fp32["weights_first_conv"] == "nchw"
    assert rows[1, "fp16-autocast/nchw/device"]["act_first_conv"] == "nchw"
    last = rows[1, "fp16-autocast/channels-last/device"]
    assert last["act_first_conv"] == last["weights_first_conv"] == "channels_last"

    floor = report["floor"]
    assert floor["matmul"]["kind"] == "cpu-float32-matmul" and floor["flop_per_image"] > 1e8
    assert floor["images_per_s"] == pytest.approx(
        floor["matmul"]["tflops"] * 1e12 / floor["flop_per_image"]
    )
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["floor_images_per_s"] == floor["images_per_s"]
        assert row["ratio_to_floor"] == pytest.approx(row["images_per_s"] / floor["images_per_s"])

    copied = rows[2, "fp16-autocast/channels-last/host-pageable"]
    assert copied["host_memory"] == "pageable" and copied["copy"] == "cpu->cpu"
    decoded = rows[2, "fp16-autocast/channels-last/png-decode"]
    assert decoded["decode"] == "PIL + numpy" and decoded["decode_threads"] >= 1
    assert report["fp16_vs_fp32"]["map_max_rel"] < 0.1
    assert report["fp16_vs_fp32"]["tf32_cudnn"] is False
    assert 0 < report["postprocess_dlpack"]["share"] < 1
    assert "act@conv1" in result.stdout and "FP16 vs FP32 (TF32 off)" in result.stdout


def test_gpu_check_requires_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--device", "cpu", "--smoke"])
    assert exc.value.code != 0
    assert "--out" in capsys.readouterr().err


def test_gpu_check_budget_zero_writes_what_it_skipped(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    gpu_check.main(["--device", "cpu", "--smoke", "--budget-s", "0", "--out", str(out)])
    report = json.loads(out.read_text())
    planned = [f"batch {b} {v.label}" for b, v in gpu_check.plan(True, CPU)]
    assert report["throughput"] == []
    assert report["skipped"] == ["floor", *planned, "fp16_vs_fp32", "postprocess_dlpack"]


def test_gpu_check_rows_report_the_layout_the_first_conv_sees() -> None:
    model = gpu_check.Pipeline(32).eval()
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    seen = {}
    for layout in gpu_check.LAYOUTS:
        row = gpu_check.measure_row(
            model, images, gpu_check.Variant("fp32", layout), CPU, 1, {"images_per_s": 1.0}
        )
        seen[layout] = (row["act_first_conv"], row["weights_first_conv"])
    assert seen == {
        "nchw": ("nchw", "nchw"),
        "as-exported": ("channels_last", "nchw"),
        "channels-last": ("channels_last", "channels_last"),
    }
    assert model.teacher.net.conv1.weight.is_contiguous()  # the shared model is unchanged


def test_gpu_check_records_a_failing_row_and_goes_on(tmp_path: Path) -> None:
    model = gpu_check.Pipeline(32).eval()
    bad = np.zeros((1, 32, 32, 2), dtype=np.uint8)  # two channels: the model fails
    out = tmp_path / "gpu.json"
    rec = gpu_check.Recorder(out, 60, {})
    good = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    variant = gpu_check.Variant("fp32", "as-exported")
    for images in (bad, good):
        rec.run(
            "row", partial(gpu_check.measure_row, model, images, variant, CPU, 1, {}), "throughput"
        )
        assert json.loads(out.read_text())["throughput"] == rec.result["throughput"]  # saved
    failed, passed = rec.result["throughput"]
    assert "Error" in failed["error"] and passed["images_per_s"] > 0
    assert passed["ratio_to_floor"] is None  # no floor measured: no ratio invented


def test_png_decode_source_delivers_the_images() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    load, notes = gpu_floor.input_fn("png-decode", images, CPU)
    np.testing.assert_array_equal(load().numpy(), images)
    np.testing.assert_array_equal(load().numpy(), images)  # again, into the same buffer
    assert notes["host_memory"] == "pageable"
    with pytest.raises(ValueError, match="CUDA"):
        gpu_floor.input_fn("host-pinned", images, CPU)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_check_smoke_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    gpu_check.main(["--device", "cuda", "--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    labels = {r["label"]: r for r in report["throughput"]}
    assert report["floor"]["matmul"]["kind"] == "cuda-float16-matmul"
    assert labels["fp16-autocast/channels-last/host-pinned"]["host_memory"] == "pinned"
    assert "images_per_s" in labels["fp16-autocast/channels-last/cuda-graph/device"]
    assert all("error" not in r for r in report["throughput"]), report["throughput"]
