"""Throughput benchmark: perf_analyzer sweeps plus four ratios, each measured side by side here.

1. ensemble / in-process ONNX Runtime (same graphs and maths, same batch, same threads)
2. dcam-client end to end / in-process pipeline including decoding
3. share of ensemble request time spent in `postprocess` (Triton's statistics)
4. fused layout / ensemble layout
Every throughput is also given as a fraction of the physical floor (FLOP per image over this
machine's measured GEMM rate). Writes benchmarks/results/throughput-<tag>.{json,md,csv,png} and
perf_analyzer's CSVs under benchmarks/results/perf-<tag>/.

Run: `.venv/bin/python benchmarks/throughput.py` (about 20 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import common
import perf

from dcam.build.config import BuildConfig
from dcam.build.engines import build_repository
from dcam.build.parity import onnxruntime_session
from dcam.client.results import ResultWriter
from dcam.client.score import ScoreConfig, Scorer
from dcam.core import scoring
from dcam.core.images import load_image
from dcam.core.manifest import Manifest
from dcam.core.names import ENSEMBLE_MODEL, FUSED_MODEL, IMAGE, LEVELS, ROLES, feature_name
from dcam.serve.server import ServerConfig, TritonServer


class InProcess:
    """The same ONNX graphs and maths in one process: teacher || student, then the map."""

    def __init__(self, repo: Path, threads: int) -> None:
        self.teacher = onnxruntime_session(repo / "teacher" / "1" / "model.onnx", threads)
        self.student = onnxruntime_session(repo / "student" / "1" / "model.onnx", threads)
        self.pool = ThreadPoolExecutor(2)
        self.spec = Manifest.read(repo).scoring

    def __call__(self, images: np.ndarray) -> np.ndarray:
        t, s = self.pool.map(
            lambda sess: sess.run(None, {IMAGE: images}), (self.teacher, self.student)
        )
        return scoring.score(self.spec, t, s).normalised

    def features(self, images: np.ndarray) -> list[np.ndarray]:
        return self.teacher.run(None, {IMAGE: images}) + self.student.run(None, {IMAGE: images})


def images_per_s(fn, batches: list, repeats: int = 2) -> float:
    fn(batches[0])  # warm-up
    start = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for batch in batches:
            fn(batch)
            n += len(batch)
    return n / (time.perf_counter() - start)


def build(run: Path, work: Path, layout: str) -> Path:
    out = work / layout
    if not out.exists():
        build_repository(BuildConfig(run_dir=str(run), out=str(out), target="cpu", layout=layout))
    return out


def perf_inputs(work: Path, images: np.ndarray, proc: InProcess) -> dict[str, Path]:
    items = [{IMAGE: img} for img in images]
    image_json = perf.write_input_data(work / "images.json", items)
    names = [feature_name(role, level) for role in ROLES for level in LEVELS]
    feats = proc.features(images[:4])
    post = [{n: f[i] for n, f in zip(names, feats, strict=True)} for i in range(4)]
    post_json = perf.write_input_data(work / "features.json", post)
    return {
        ENSEMBLE_MODEL: image_json,
        FUSED_MODEL: image_json,
        "teacher": image_json,
        "student": image_json,
        "postprocess": post_json,
    }


def client_end_to_end(repo: Path, folder: Path, out: Path, batch: int) -> float:
    """dcam-client's library path: decode, resize, send, results written and flushed."""

    async def run() -> float:
        with TritonServer(ServerConfig(repo)) as server:
            scorer = Scorer(ScoreConfig(urls=(server.grpc_url,), batch_size=batch, concurrency=4))
            await scorer.start()
            paths = sorted(folder.glob("*.png"))
            start = time.perf_counter()
            with ResultWriter(out) as writer:
                async for result in scorer.stream(paths):
                    writer.write(result)
            seconds = time.perf_counter() - start
            await scorer.close()
            return len(paths) / seconds

    return asyncio.run(run())


def postprocess_maths_speed(proc: InProcess, images: np.ndarray) -> dict[str, float]:
    """numpy vs torch-CPU for the post-processing maths (issue: use the faster on CPU)."""
    import torch

    feats = proc.features(images)
    t, s = feats[:3], feats[3:]
    tt, st = [torch.from_numpy(a) for a in t], [torch.from_numpy(a) for a in s]
    timing = {}
    for name, args in (("numpy", (t, s)), ("torch_cpu", (tt, st))):
        start = time.perf_counter()
        for _ in range(5):
            scoring.anomaly_maps(proc.spec, *args)
        timing[name] = 5 * len(images) / (time.perf_counter() - start)
    return timing


def plan(batches: tuple[int, ...]) -> tuple[list[dict], list[dict]]:
    conc = {1: "1:4:1", 8: "1:4:1", 32: "1:2:1"}
    ensemble = [
        {"model": ENSEMBLE_MODEL, "batch": b, "concurrency": conc.get(b, "1:2:1")} for b in batches
    ]
    ensemble += [
        {"model": m, "batch": 8, "concurrency": "1:2:1"}
        for m in ("teacher", "student", "postprocess")
    ]
    fused = [
        {"model": ENSEMBLE_MODEL, "batch": b, "concurrency": conc.get(b, "1:2:1")} for b in batches
    ]
    # The fused graph alone, without the decide step the served `dcam` adds (ratio 5).
    fused.append({"model": FUSED_MODEL, "batch": 8, "concurrency": "1:4:1"})
    return ensemble, fused


def best(runs: list[dict], layout: str, model: str, batch: int) -> float:
    """The best measured rate, NaN where perf_analyzer could not stabilise any level (a ratio
    then reads NaN in the report instead of ending the run)."""
    rates = [
        float(r["Inferences/Second"])
        for run in runs
        if run["layout"] == layout and run["model"] == model and run["batch"] == batch
        for r in run["rows"]
    ]
    return max(rates, default=float("nan"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument(
        "--shared-memory",
        choices=["none", "system", "cuda"],
        default="none",
        help="perf_analyzer input/output transport; cuda needs a GPU server",
    )
    p.add_argument("--tag", default=time.strftime("%Y%m%d"))
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = p.parse_args()
    batches = tuple(int(b) for b in args.batches.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="dcam-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out = common.RESULTS / f"perf-{args.tag}"
    out.mkdir(parents=True, exist_ok=True)
    run = common.benchmark_run(work, args.size)
    repos = {layout: build(run, work, layout) for layout in ("ensemble", "fused")}
    threads = BuildConfig(run_dir="", out="").session_threads(2)
    proc = InProcess(repos["ensemble"], threads)
    images = common.production_images(32, args.size)

    inputs = perf_inputs(work, images, proc)
    ens_plan, fused_plan = plan(batches)
    runs = perf.sweep(repos["ensemble"], ens_plan, inputs, out, args.shared_memory)["runs"]
    runs += perf.sweep(repos["fused"], fused_plan, inputs, out, args.shared_memory)["runs"]

    in_process_b8 = images_per_s(proc, [images[i : i + 8] for i in range(0, 32, 8)])
    folder = work / "line"
    folder.mkdir(exist_ok=True)
    for i, img in enumerate(common.production_images(96, args.size, seed=1)):
        Image.fromarray(img).save(folder / f"part-{i:04d}.png")
    paths = sorted(folder.glob("*.png"))
    in_process_decode = images_per_s(
        lambda ps: proc(np.stack([load_image(q, args.size) for q in ps])),
        [paths[i : i + 8] for i in range(0, len(paths), 8)],
        repeats=1,
    )
    client = client_end_to_end(repos["ensemble"], folder, work / "scores.jsonl", 8)

    stats = [
        r["stats"]
        for r in runs
        if r["layout"] == "ensemble" and r["model"] == ENSEMBLE_MODEL and r["stats"]
    ]
    post_ns = sum(s["postprocess"]["request_ns"] for s in stats)
    ens_ns = sum(s[ENSEMBLE_MODEL]["request_ns"] for s in stats)
    flops = 2 * common.flops_per_image(args.size)
    rates = {
        "torch_gemm": common.matmul_gflops(threads=None),
        "onnxruntime_conv3x3": common.conv_gflops(),
    }
    gflops = max(rates.values())
    floor = gflops * 1e9 / flops
    ens_b8, fused_b8 = (
        best(runs, "ensemble", ENSEMBLE_MODEL, 8),
        best(runs, "fused", ENSEMBLE_MODEL, 8),
    )
    ratios = {
        "1_ensemble_over_in_process": {
            "ratio": ens_b8 / in_process_b8,
            "ensemble_b8": ens_b8,
            "in_process_b8": in_process_b8,
            "target": ">= 0.90",
        },
        "2_client_over_in_process_with_decode": {
            "ratio": client / in_process_decode,
            "client": client,
            "in_process_with_decode": in_process_decode,
            "target": ">= 0.85",
        },
        "3_postprocess_share": {
            "ratio": post_ns / ens_ns if ens_ns else float("nan"),
            "postprocess_request_ns": post_ns,
            "ensemble_request_ns": ens_ns,
            "target": "<= 0.10",
        },
        "4_fused_over_ensemble": {
            "ratio": fused_b8 / ens_b8,
            "fused_b8": fused_b8,
            "ensemble_b8": ens_b8,
        },
        "5_fused_with_decide_over_graph_alone": {
            "ratio": fused_b8 / best(runs, "fused", FUSED_MODEL, 8),
            "fused_b8": fused_b8,
            "graph_alone_b8": best(runs, "fused", FUSED_MODEL, 8),
            "target": ">= 0.97",
        },
    }
    rows = perf.summary_rows(runs)
    for r in rows:
        r["fraction_of_floor"] = r["images_per_s"] / floor
    with (common.RESULTS / f"throughput-{args.tag}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    title = (
        f"dcam {args.size}px on {common.machine()['cpu']} ({common.machine()['cores']} "
        f"cores), Triton 2.51 CPU, shm={args.shared_memory}"
    )
    perf.plot(rows, common.RESULTS / f"throughput-{args.tag}.png", title)
    payload = {
        **common.stamp(),
        "size": args.size,
        "threads_per_session": threads,
        "floor": {
            "gflop_per_image_pair": flops / 1e9,
            "best_gflops": gflops,
            "images_per_s": floor,
        },
        "ratios": ratios,
        "postprocess_maths_images_per_s": postprocess_maths_speed(proc, images[:8]),
        "runs": [{k: v for k, v in r.items() if k != "rows"} | {"rows": r["rows"]} for r in runs],
    }
    common.write_json(common.RESULTS / f"throughput-{args.tag}.json", payload)
    print(report(payload, floor))


def report(payload: dict, floor: float) -> str:
    lines = [
        f"floor: {payload['floor']['gflop_per_image_pair']:.2f} GFLOP per image (teacher +"
        f" student), best measured rate {payload['floor']['best_gflops']:.0f} GFLOP/s -> "
        f"{floor:.1f} images/s",
        "",
        "| ratio | value | raw | target |",
        "|---|---|---|---|",
    ]
    for name, r in payload["ratios"].items():
        raw = ", ".join(
            f"{k} {v:.4g}"
            for k, v in r.items()
            if k not in ("ratio", "target") and isinstance(v, float)
        )
        lines.append(f"| {name} | {r['ratio']:.3f} | {raw} | {r.get('target', '')} |")
    maths = payload["postprocess_maths_images_per_s"]
    lines.append(
        f"\npost-processing maths on CPU: numpy {maths['numpy']:.0f} images/s, "
        f"torch {maths['torch_cpu']:.0f} images/s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
