"""GPU check: teacher + student + anomaly map in PyTorch, FP32 vs FP16, batch 1 to 256.

For an NVIDIA H200 lent for one call of at most 8 minutes (PyTorch with CUDA, ONNX and ONNX
Runtime there; no TensorRT, no downloads). Measures images/s and latency for FP32 and FP16
(autocast), channels_last and CUDA graphs; the FP16 vs FP32 map error and the change in image
AUROC on generated data; the cost of the post-processing maths on the GPU through DLPack (the
path the Triton post-processing model takes). Prints a short table last and writes everything
to --out. `--device cpu --smoke` runs the same code small on a CPU (the tests call it).

Survives the machine it is sent to: it needs neither an installed dcam (it links the source tree,
see source_tree.py) nor git; each variant runs on its own copy of the model and a failing one is
recorded with its error while the rest go on; the JSON is rewritten after every measurement, so
a run cut short still leaves everything measured so far.

Run on the GPU machine: `python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json`
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import common

from dcam.build.export import FeatureNet
from dcam.core import anomaly_map as amap
from dcam.core.metrics import auroc
from dcam.datasets.synthetic import CATEGORIES, render_defect, render_good


class Pipeline(torch.nn.Module):
    """uint8 images -> anomaly maps, all on one device (what a fused GPU deployment runs)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        self.teacher, self.student = (
            FeatureNet("resnet18", mean, std),
            FeatureNet("resnet18", mean, std),
        )
        self.map_args = ((size, size), "sum", 4.0)  # the shipped defaults: sum of levels, sigma 4

    def features(self, images: torch.Tensor) -> tuple[list, list]:
        return list(self.teacher(images)), list(self.student(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        t, s = self.features(images)
        return amap.anomaly_map(t, s, *self.map_args)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call, after warm-up, synchronised on CUDA."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def variant_fn(model: Pipeline, images: torch.Tensor, variant: str, device: torch.device):
    fp16 = "fp16" in variant
    if "cl" in variant:  # on a copy: .to(memory_format) changes a module in place
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            return model(images)

    if "graph" not in variant or device.type != "cuda":
        return run
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = run()  # noqa: F841 (kept alive by the graph)
    return graph.replay


def measure_variant(model, images, variant: str, device, repeats: int) -> dict:
    """One row; any failure (out of memory, a CUDA-graph capture error) becomes its error."""
    row = {"batch": len(images), "variant": variant}
    try:
        seconds = timed(variant_fn(model, images, variant, device), device, repeats)
    except Exception as exc:  # one variant must not end the run
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"batch {len(images):4d} {variant:16s} FAILED {type(exc).__name__}", flush=True)
        return {**row, "error": f"{type(exc).__name__}: {exc}"[:500]}
    print(f"batch {len(images):4d} {variant:16s} {len(images) / seconds:9.1f} img/s", flush=True)
    return {**row, "latency_ms": seconds * 1000, "images_per_s": len(images) / seconds}


def throughput_table(model, device, size, batches, variants, repeats, save) -> list[dict]:
    """Every batch x variant; `save()` after each row so a cut-short run keeps what it measured."""
    rows = []
    for batch in batches:
        images = torch.from_numpy(common.production_images(batch, size)).to(device)
        for variant in variants:
            rows.append(measure_variant(model, images, variant, device, repeats))
            save(rows)
    return rows


def fp16_accuracy(model, device, size, n_per_class: int) -> dict:
    """FP16 vs FP32 map error and image AUROC on generated good/defect parts."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for cat in CATEGORIES:
        for _ in range(n_per_class):
            images.append(render_good(cat, size, rng))
            labels.append(False)
            images.append(render_defect(cat, "stain", size, rng)[0])
            labels.append(True)
    x = torch.from_numpy(np.stack(images)).to(device)
    maps = {}
    for name, fp16 in (("fp32", False), ("fp16", True)):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            maps[name] = torch.cat([model(b) for b in x.split(32)]).float().cpu().numpy()
    diff = np.abs(maps["fp16"] - maps["fp32"])
    scores = {k: amap.image_scores(v) for k, v in maps.items()}
    return {
        "map_max_abs": float(diff.max()),
        "map_max_rel": float(diff.max() / np.abs(maps["fp32"]).max()),
        "auroc_fp32": auroc(np.array(labels), scores["fp32"]),
        "auroc_fp16": auroc(np.array(labels), scores["fp16"]),
        "note": "random weights: the AUROC values themselves mean nothing; their change does",
    }


def postprocess_cost(model, device, size, batch: int, repeats: int) -> dict:
    """The post-processing maths on device tensors handed over by DLPack, as in Triton."""
    images = torch.from_numpy(common.production_images(batch, size)).to(device)
    with torch.no_grad():
        t, s = model.features(images)
    capsules = [torch.utils.dlpack.to_dlpack(f) for f in t + s]
    feats = [torch.from_dlpack(c) for c in capsules]

    def maths():
        return amap.anomaly_map(feats[:3], feats[3:], *model.map_args)

    def full():
        with torch.no_grad():
            return model(images)

    post, total = timed(maths, device, repeats), timed(full, device, repeats)
    return {
        "batch": batch,
        "postprocess_ms": post * 1000,
        "pipeline_ms": total * 1000,
        "share": post / total,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CPU tests")
    p.add_argument("--out", default="gpu_check.json")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    size = 64 if args.smoke else 256
    batches = [1, 2] if args.smoke else [1, 8, 32, 64, 128, 256]
    variants = (
        ["fp32", "fp16"] if args.smoke else ["fp32", "fp32-cl", "fp16", "fp16-cl", "fp16-cl-graph"]
    )
    repeats = 2 if args.smoke else 20
    torch.manual_seed(0)
    model = Pipeline(size).to(device).eval()
    out = Path(args.out)
    result: dict = {**common.stamp(), "device": str(device), "size": size, "throughput": []}

    def save(rows: list | None = None) -> None:
        if rows is not None:
            result["throughput"] = rows
        common.write_json(out, result)

    save()
    throughput_table(model, device, size, batches, variants, repeats, save)
    sections = {
        "fp16_vs_fp32": lambda: fp16_accuracy(model, device, size, 1 if args.smoke else 16),
        "postprocess_dlpack": lambda: postprocess_cost(model, device, size, batches[-1], repeats),
    }
    for name, measure in sections.items():
        try:
            result[name] = measure()
        except Exception as exc:  # recorded; the other sections still run
            result[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        save()
    print_summary(result)


def print_summary(result: dict) -> None:
    print(f"\n{'batch':>5} {'variant':16s} {'img/s':>9} {'ms':>8}")
    for row in result["throughput"]:
        if "error" in row:
            print(f"{row['batch']:5d} {row['variant']:16s} {row['error'][:60]}")
        else:
            print(
                f"{row['batch']:5d} {row['variant']:16s} {row['images_per_s']:9.1f} "
                f"{row['latency_ms']:8.2f}"
            )
    acc, post = result["fp16_vs_fp32"], result["postprocess_dlpack"]
    if "error" in acc:
        print(f"FP16 vs FP32: {acc['error']}")
    else:
        print(
            f"FP16 vs FP32: map max rel err {acc['map_max_rel']:.2e}, image AUROC "
            f"{acc['auroc_fp32']:.4f} -> {acc['auroc_fp16']:.4f}"
        )
    if "error" in post:
        print(f"post-processing through DLPack: {post['error']}")
    else:
        print(
            f"post-processing through DLPack: {post['postprocess_ms']:.2f} ms of "
            f"{post['pipeline_ms']:.2f} ms ({100 * post['share']:.1f}%) at batch {post['batch']}"
        )


if __name__ == "__main__":
    main()
