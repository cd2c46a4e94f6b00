"""Shared pieces of the benchmarks: what machine and code a result came from, a model to measure,
generated production-line images, and the machine's measured compute rate (the physical floor).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import source_tree
import torch

source_tree.ensure_dcam_importable()  # the GPU machine gets the tree, not an install

from dcam.core.files import write_json_atomic  # noqa: E402
from dcam.core.versions import package_versions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    cpu = "unknown"
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version()}


def versions() -> dict:
    # nvidia-pytriton 0.7.0 carries tritonserver 2.51.0
    return package_versions("torch", "onnxruntime", "numpy", "nvidia-pytriton", "tritonclient")


def git_commit() -> str:
    """The checkout's commit (+dirty), or 'unknown' where there is no git or no repository
    (the GPU machine's copy of the tree may have neither)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "-uno"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    if result.returncode != 0:
        return "unknown (not a git checkout)"
    return result.stdout.strip() + ("+dirty" if dirty else "")


def stamp() -> dict:
    """Machine, versions and commit: every results file carries them."""
    return {
        "machine": machine(),
        "versions": versions(),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run_folder_arguments(doc: str) -> argparse.Namespace:
    """`RUNS... [--tag T]`: the arguments of the benchmarks that read trained runs back
    (levers.py, run_facts.py); the description is the script's first docstring line."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="trained run folders")
    p.add_argument("--tag", default=time.strftime("%Y%m%d"))
    return p.parse_args()


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--layout, --tag and --work: what the serving benchmarks share."""
    parser.add_argument("--layout", choices=["ensemble", "fused"], default="ensemble")
    parser.add_argument("--tag", default=time.strftime("%Y%m%d"))
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")


def add_client_load_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """The client-load benchmarks' PNG files (--size, --images), --rounds, and the run ones."""
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=rounds)
    add_run_arguments(parser)


def client_load_setup(doc: str, rounds: int) -> tuple[argparse.Namespace, Path, Path]:
    """A client-load benchmark's start: its arguments, work folder and training run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_client_load_arguments(parser, rounds=rounds)
    args = parser.parse_args()
    work = work_folder(args, "dcam-bench-")
    return args, work, benchmark_run(work, args.size)


def client_load_head(args: argparse.Namespace, images: int) -> dict:
    """The fields every client-load result starts with: what ran, on which machine."""
    return {
        "tag": args.tag,
        "size": args.size,
        "images": images,
        "rounds": args.rounds,
        "layout": args.layout,
        "stamp": stamp(),
    }


def work_folder(args: argparse.Namespace, prefix: str) -> Path:
    work = Path(args.work or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work


def benchmark_run(work: Path, size: int = 256) -> Path:
    """A training run at the production input size to build and serve (one short epoch: its
    weights do not change throughput)."""
    from dcam.datasets.synthetic import generate_dataset
    from dcam.training.config import TrainConfig
    from dcam.training.train import train

    run = work / f"run-{size}"
    if (run / "manifest.json").exists():
        return run
    data = work / f"data-{size}"
    generate_dataset(
        data,
        categories=["carpet", "nut"],
        n_train=8,
        n_test_good=2,
        n_test_per_defect=1,
        size=size,
        seed=0,
        force=True,
    )
    train(
        TrainConfig(
            data=(str(data),),
            out=str(run),
            teacher="random",
            image_size=size,
            epochs=1,
            device="cpu",
        ),
        force=True,
    )
    return run


def production_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 generated good and defective parts of every category."""
    from dcam.datasets.synthetic import CATEGORIES, render_defect, render_good

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cat = CATEGORIES[i % len(CATEGORIES)]
        out.append(
            render_good(cat, size, rng) if i % 3 else render_defect(cat, "stain", size, rng)[0]
        )
    return np.stack(out)


def matmul_gflops(threads: int | None = None, n: int = 2048, repeats: int = 5) -> float:
    """Sustained FP32 GEMM rate of this machine through torch: the compute ceiling."""
    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def flops_per_image(size: int = 256, backbone: str = "resnet18") -> float:
    """FLOP of one network (stem + layers 1-3) on one image, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from dcam.training.model import FeatureExtractor

    net = FeatureExtractor(backbone).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def production_files(folder: Path, n: int, size: int) -> list[Path]:
    """`production_images` written as PNG files into `folder` (a line's camera folder)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(production_images(n, size, seed=1)):
        Image.fromarray(img).save(folder / f"part-{i:04d}.png")
    return sorted(folder.glob("*.png"))[:n]


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload)


def publish(stem: str, payload: dict, report: Callable[[dict], str]) -> Path:
    """Write results/<stem>.json and its Markdown report, print the report; returns the stem path.

    Every benchmark ends this way, so a result is always the JSON beside its rendered table.
    """
    path = RESULTS / stem
    write_json(path.with_suffix(".json"), payload)
    text = report(payload)
    path.with_suffix(".md").write_text(text)
    print(text)
    return path


def conv_gflops(threads: int = 0, batch: int = 8) -> float:
    """FP32 rate of ONNX Runtime on one large 3x3 convolution (the work this model is made of).

    On AMD EPYC machines torch's and OpenBLAS's GEMMs reach well under the convolution kernels'
    rate, so the floor takes the best of the measured rates.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.rand(256, 256, 3, 3).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    x = np.random.rand(batch, 256, 64, 64).astype(np.float32)
    session.run(None, {"x": x})
    start = time.perf_counter()
    for _ in range(3):
        session.run(None, {"x": x})
    flops = 2 * 256 * 256 * 9 * 64 * 64 * batch * 3
    return flops / (time.perf_counter() - start) / 1e9
