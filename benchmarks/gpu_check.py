"""GPU check: teacher + student + anomaly map in PyTorch, each row against the device's floor.

For an NVIDIA H200 lent for one call of at most 8 minutes (PyTorch with CUDA; no TensorRT, no
downloads). Reads nothing; writes --out (JSON, rewritten after every measurement) and prints a
table last. Each row names its precision (fp32 with TF32 off, tf32, fp16-autocast; the TF32
flags are recorded), its layout (the memory format seen at the first convolution is recorded),
its input source (images on the device, copied from pageable or pinned host memory, or decoded
from PNG on the CPU) and its ratio to the floor (gpu_floor.py). Also the FP16 vs FP32 map error
and AUROC change, and the post-processing maths through DLPack as in Triton.

Survives the machine it is sent to: needs neither an installed dcam (see source_tree.py) nor
git; each row runs on its own copy of the model and a failing one is recorded with its error;
past --budget-s no new measurement starts and the skipped ones are listed.
`--device cpu --smoke` runs the same code small on a CPU (the tests call it).

Run on the GPU machine: `python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json`
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import common
import gpu_floor
from gpu_floor import input_fn, set_tf32, timed

from dcam.build.export import FeatureNet
from dcam.core import anomaly_map as amap
from dcam.core.metrics import auroc
from dcam.datasets.synthetic import CATEGORIES, render_defect, render_good

# precision -> (TF32 flags, FP16 autocast); fp16-autocast keeps TF32 off for what stays FP32
PRECISIONS = {"fp32": (False, False), "tf32": (True, False), "fp16-autocast": (False, True)}
# The activation format forced after normalising; "as-exported" keeps what the graph's permute
# of the NHWC input leaves (recorded per row), with the weights in torch's default layout.
LAYOUTS = {
    "nchw": torch.contiguous_format,
    "as-exported": None,
    "channels-last": torch.channels_last,
}


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


class Layout(torch.nn.Module):
    """Normalise, then put the activations in `fmt` (None: leave them as normalising does)."""

    def __init__(self, normalize: torch.nn.Module, fmt: torch.memory_format | None) -> None:
        super().__init__()
        self.normalize, self.fmt = normalize, fmt

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        return x if self.fmt is None else x.contiguous(memory_format=self.fmt)


@dataclass(frozen=True)
class Variant:
    precision: str  # a PRECISIONS key
    layout: str  # a LAYOUTS key; channels-last also converts the weights
    source: str = "device"  # a gpu_floor.SOURCES value
    cuda_graph: bool = False

    @property
    def label(self) -> str:
        graph = ["cuda-graph"] if self.cuda_graph else []
        return "/".join([self.precision, self.layout, *graph, self.source])


def plan(smoke: bool, device: torch.device) -> list[tuple[int, Variant]]:
    """(batch, variant) rows in order: by batch, device-resident first, then end to end."""
    cuda = device.type == "cuda"
    on_device = [
        Variant("fp32", "as-exported"),
        Variant("tf32", "as-exported"),
        Variant("fp16-autocast", "nchw"),
        *([] if smoke else [Variant("fp16-autocast", "as-exported")]),
        Variant("fp16-autocast", "channels-last"),
        *([Variant("fp16-autocast", "channels-last", cuda_graph=True)] if cuda else []),
    ]
    sources = ["host-pageable", *(["host-pinned"] if cuda else []), "png-decode"]
    end_to_end = [Variant("fp16-autocast", "channels-last", s) for s in sources]
    batches, e2e_batches = ([1, 2], [2]) if smoke else ([1, 8, 32, 64, 128, 256], [8, 64, 256])
    return [(b, v) for b in batches for v in on_device + (end_to_end if b in e2e_batches else [])]


def variant_model(model: Pipeline, layout: str) -> Pipeline:
    """A copy in `layout`: .to(memory_format) changes a module in place."""
    model = copy.deepcopy(model)
    if layout == "channels-last":
        model = model.to(memory_format=torch.channels_last)
    for net in (model.teacher, model.student):
        net.normalize = Layout(net.normalize, LAYOUTS[layout])
    return model


def step_fn(model: Pipeline, load, fp16: bool, device: torch.device):
    def step() -> torch.Tensor:
        x = load()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            return model(x)

    return step


def capture_graph(step, device: torch.device):
    """The step captured as a CUDA graph; its replay re-runs it on the same input buffer."""
    if device.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()  # noqa: F841 (kept alive by the graph)
    return graph.replay


def measure_row(model, images: np.ndarray, variant: Variant, device, repeats, floor) -> dict:
    """One row; any failure (out of memory, a capture error) becomes the row's error."""
    row = {"batch": len(images), "label": variant.label, **asdict(variant)}
    tf32, fp16 = PRECISIONS[variant.precision]
    try:
        row.update(set_tf32(tf32))
        m = variant_model(model, variant.layout)
        load, notes = input_fn(variant.source, images, device)
        row.update(notes)
        step = step_fn(m, load, fp16, device)
        row.update(gpu_floor.first_conv_formats(m, step))
        fn = capture_graph(step, device) if variant.cuda_graph else step
        seconds = timed(fn, device, repeats)
    except Exception as exc:  # one row must not end the run
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"batch {len(images):4d} {variant.label:46s} FAILED {type(exc).__name__}", flush=True)
        return {**row, "error": f"{type(exc).__name__}: {exc}"[:500]}
    rate, floor_rate = len(images) / seconds, floor.get("images_per_s")
    row.update(latency_ms=seconds * 1000, images_per_s=rate, floor_images_per_s=floor_rate)
    row["ratio_to_floor"] = rate / floor_rate if floor_rate else None
    print(f"batch {len(images):4d} {variant.label:46s} {rate:9.1f} img/s", flush=True)
    return row


def fp16_accuracy(model, device, size, n_per_class: int) -> dict:
    """FP16 vs FP32 (TF32 off) map error and image AUROC on generated good/defect parts."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for cat in CATEGORIES:
        for _ in range(n_per_class):
            images += [render_good(cat, size, rng), render_defect(cat, "stain", size, rng)[0]]
            labels += [False, True]
    x = torch.from_numpy(np.stack(images)).to(device)
    flags, maps = set_tf32(False), {}
    for name, fp16 in (("fp32", False), ("fp16", True)):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            maps[name] = torch.cat([model(b) for b in x.split(32)]).float().cpu().numpy()
    diff = np.abs(maps["fp16"] - maps["fp32"])
    scores = {k: amap.image_scores(v) for k, v in maps.items()}
    return {
        **flags,
        "map_max_abs": float(diff.max()),
        "map_max_rel": float(diff.max() / np.abs(maps["fp32"]).max()),
        "auroc_fp32": auroc(np.array(labels), scores["fp32"]),
        "auroc_fp16": auroc(np.array(labels), scores["fp16"]),
        "note": "random weights: the AUROC values themselves mean nothing; their change does",
    }


def postprocess_cost(model, device, size, batch: int, repeats: int) -> dict:
    """The post-processing maths (FP32, TF32 off) on device tensors handed over by DLPack."""
    flags = set_tf32(False)
    images = torch.from_numpy(common.production_images(batch, size)).to(device)
    with torch.no_grad():
        t, s = model.features(images)
    feats = [torch.from_dlpack(torch.utils.dlpack.to_dlpack(f)) for f in t + s]

    def full():
        with torch.no_grad():
            return model(images)

    post = timed(lambda: amap.anomaly_map(feats[:3], feats[3:], *model.map_args), device, repeats)
    total = timed(full, device, repeats)
    return {
        **flags,
        "batch": batch,
        "postprocess_ms": post * 1000,
        "pipeline_ms": total * 1000,
        "share": post / total,
    }


class Recorder:
    """The result, rewritten atomically to `out` after every step; a step that would start past
    the budget is listed in "skipped" instead of run."""

    def __init__(self, out: Path, budget_s: float, result: dict) -> None:
        self.out, self.budget_s, self.result = out, budget_s, result
        self.start = time.monotonic()
        result.update(budget_s=budget_s, throughput=[], skipped=[])
        self.save()

    def run(self, name: str, measure: Callable[[], dict], key: str) -> None:
        """measure() into result[key] (appended to "throughput"), or its error in its place."""
        if time.monotonic() - self.start >= self.budget_s:
            self.result["skipped"].append(name)
        else:
            try:
                value = measure()
            except Exception as exc:  # recorded; the other steps still run
                value = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            if key == "throughput":
                self.result[key].append(value)
            else:
                self.result[key] = value
        self.save()

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.start, 1)
        common.write_json(self.out, self.result)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CPU tests")
    p.add_argument("--out", required=True, help="the JSON results file (rewritten as rows come)")
    p.add_argument("--budget-s", type=float, default=420.0, help="start nothing new after this")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    size, repeats, last_batch = (64, 2, 2) if args.smoke else (256, 20, 256)
    torch.manual_seed(0)
    model = Pipeline(size).to(device).eval()
    result: dict = {**common.stamp(), "device": str(device), "size": size, "repeats": repeats}
    rec = Recorder(Path(args.out), args.budget_s, result)
    rec.run("floor", partial(gpu_floor.measure_floor, model, device, size, args.smoke), "floor")
    floor = result.get("floor", {})
    images: dict[int, np.ndarray] = {}
    for batch, variant in plan(args.smoke, device):
        images = images if batch in images else {batch: common.production_images(batch, size)}
        measure = partial(measure_row, model, images[batch], variant, device, repeats, floor)
        rec.run(f"batch {batch} {variant.label}", measure, "throughput")
    per_class = 1 if args.smoke else 16
    rec.run("fp16_vs_fp32", partial(fp16_accuracy, model, device, size, per_class), "fp16_vs_fp32")
    post = partial(postprocess_cost, model, device, size, last_batch, repeats)
    rec.run("postprocess_dlpack", post, "postprocess_dlpack")
    print_summary(result)


def print_summary(result: dict) -> None:
    floor = result.get("floor", {})
    if "images_per_s" in floor:
        print(
            f"\nfloor: {floor['matmul']['kind']} {floor['matmul']['tflops']:.2f} TFLOP/s over "
            f"{floor['flop_per_image'] / 1e9:.2f} GFLOP/image = {floor['images_per_s']:.1f} img/s"
        )
    print(f"\n{'batch':>5} {'row':46s} {'act@conv1':>13} {'img/s':>9} {'ms':>8} {'/floor':>7}")
    for row in result["throughput"]:
        head = f"{row['batch']:5d} {row['label']:46s} {row.get('act_first_conv', '-'):>13}"
        ratio = row.get("ratio_to_floor")
        tail = (
            row["error"][:60]
            if "error" in row
            else f"{row['images_per_s']:9.1f} {row['latency_ms']:8.2f} "
            + (f"{ratio:7.4f}" if ratio is not None else "      -")
        )
        print(f"{head} {tail}")
    for name in result["skipped"]:
        print(f"skipped (budget): {name}")
    acc, post = result.get("fp16_vs_fp32", {}), result.get("postprocess_dlpack", {})
    if "map_max_rel" in acc:
        print(
            f"FP16 vs FP32 (TF32 off): map max rel err {acc['map_max_rel']:.2e}, image AUROC "
            f"{acc['auroc_fp32']:.4f} -> {acc['auroc_fp16']:.4f}"
        )
    if "share" in post:
        print(
            f"post-processing through DLPack: {post['postprocess_ms']:.2f} ms of "
            f"{post['pipeline_ms']:.2f} ms ({100 * post['share']:.1f}%) at batch {post['batch']}"
        )
    for name in ("fp16_vs_fp32", "postprocess_dlpack"):
        if "error" in result.get(name, {}):
            print(f"{name}: {result[name]['error']}")


if __name__ == "__main__":
    main()
