"""Throughput benchmark: the serving ratios from interleaved rounds, then perf_analyzer curves.

Six configurations score the same images in every round (rounds.py: rotated order, median of
the per-round ratios, min-max, a `consistent` flag), with both layouts' servers up throughout:
in-process at batch 8 on decoded images, in-process decoding PNG files, the served ensemble
`dcam`, the fused layout's `dcam` and its `fused` graph alone (decoded batches over gRPC, 4 in
flight), and dcam-client end to end (PNG files to results). The ratios:
0. in-process with decoding / in-process (below 1, or the run measured drift)
1. ensemble / in-process
2. dcam-client end to end / in-process with decoding
3. share of the ensemble's request time spent in `postprocess` (Triton's statistics per round)
4. fused / ensemble
5. fused with its calibrate step / the fused graph alone
Beside each configuration: the CPU seconds per image of this process, each tritonserver and
each Python-backend stub (cpu_accounting.py), and its rate as a fraction of the physical floor.
The perf_analyzer sweeps on the same servers are curves only; no ratio comes from them.
Writes benchmarks/results/throughput-<tag>.{json,md,csv,png} and perf_analyzer's CSVs under
benchmarks/results/perf-<tag>/.

Run: `.venv/bin/python benchmarks/throughput.py` (about 20 minutes on 2 CPU cores; with
`--batches 8 --sweep-interval-ms 3000` about 8).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common
import cpu_accounting
import perf
import rounds
from pipelines import ClientPath, InProcess, InProcessPath, OnRunner, ServedPath, build

from dcam.build.config import BuildConfig
from dcam.core import scoring
from dcam.core.names import (
    DECISION_OUTPUTS,
    ENSEMBLE_MODEL,
    FUSED_MODEL,
    IMAGE,
    LEVELS,
    POSTPROCESS_MODEL,
    RAW_SCORE,
    ROLES,
    feature_name,
)
from dcam.serve.server import ServerConfig, TritonServer

RATIOS = {  # name -> (numerator, denominator, target)
    "0_decode": ("in_process_decode", "in_process", "< 1"),
    "1_ensemble_over_in_process": ("ensemble", "in_process", ">= 0.90"),
    "2_client_over_in_process_with_decode": ("client", "in_process_decode", ">= 0.85"),
    "4_fused_over_ensemble": ("fused", "ensemble", ""),
    "5_fused_with_calibrate_over_graph_alone": ("fused", "fused_graph", ">= 0.97"),
}
SHARE = "3_postprocess_share"


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
        POSTPROCESS_MODEL: post_json,
    }


def measure(
    proc: InProcess,
    servers: dict[str, TritonServer],
    images: np.ndarray,
    paths: list[Path],
    work: Path,
    n_rounds: int,
) -> dict:
    """The six configurations in interleaved rounds against the running `servers`
    ({"ensemble": ..., "fused": ...}); rounds.interleave's result."""
    size = images.shape[1]
    ens, fused = servers["ensemble"].grpc_url, servers["fused"].grpc_url
    with asyncio.Runner() as runner:
        client = OnRunner(runner, ClientPath(ens, paths, work / "scores.jsonl"))
        served = {
            "ensemble": ServedPath(runner, ens, ENSEMBLE_MODEL, DECISION_OUTPUTS, images),
            "fused": ServedPath(runner, fused, ENSEMBLE_MODEL, DECISION_OUTPUTS, images),
            "fused_graph": ServedPath(runner, fused, FUSED_MODEL, (RAW_SCORE,), images),
        }
        configs = {
            "in_process": InProcessPath(proc, images=images),
            "in_process_decode": InProcessPath(proc, paths=paths, size=size),
            **served,
            "client": client,
        }
        pids = {label: s.process.pid for label, s in servers.items()}
        probes = {
            "cpu_s": cpu_accounting.CpuCounters(pids),
            "triton": lambda: perf.stats_counters({"ensemble": servers["ensemble"].http_url}),
        }
        try:
            return rounds.interleave(configs, n_rounds, probes)
        finally:
            client.close()
            for path in served.values():
                path.close()


def summarise(result: dict) -> dict:
    """Ratios with their spread and consistency, and CPU seconds per image per process."""
    rates = result["images_per_s"]
    ratios = {name: rounds.ratio(rates, a, b) for name, (a, b, _) in RATIOS.items()}
    post, whole = (f"ensemble/{m}/request_ns" for m in (POSTPROCESS_MODEL, ENSEMBLE_MODEL))
    shares = [d[post] / d[whole] for d in result["deltas"]["triton"]["ensemble"] if d.get(whole)]
    ratios[SHARE] = {
        "of": "postprocess / dcam request time",
        **rounds.spread(shares, reference=None),
    }
    cpu = result["deltas"]["cpu_s"]
    return {
        "ratios": dict(sorted(ratios.items())),
        "targets": {name: t for name, (_, _, t) in RATIOS.items()} | {SHARE: "<= 0.10"},
        "images_per_s": {name: statistics.median(r) for name, r in rates.items()},
        "cpu_s_per_image": {
            name: cpu_accounting.per_image(cpu[name], result["images"][name]) for name in rates
        },
    }


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
    """perf_analyzer sweeps per layout: `dcam` at each batch, the parts alone at batch 8."""
    conc = {1: "1:4:1", 8: "1:4:1", 32: "1:2:1"}
    served = [
        {"model": ENSEMBLE_MODEL, "batch": b, "concurrency": conc.get(b, "1:2:1")} for b in batches
    ]
    ensemble = served + [
        {"model": m, "batch": 8, "concurrency": "1:2:1"} for m in (*ROLES, POSTPROCESS_MODEL)
    ]
    fused = [*served, {"model": FUSED_MODEL, "batch": 8, "concurrency": "1:4:1"}]
    return ensemble, fused


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--images", type=int, default=160, help="per configuration and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tag", default=time.strftime("%Y%m%d"))
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    p.add_argument(
        "--batches", default="1,8,32", help="perf_analyzer sweeps' batch sizes; 'none': no sweeps"
    )
    p.add_argument("--sweep-interval-ms", type=int, default=6000, help="perf_analyzer -p")
    p.add_argument(
        "--shared-memory",
        choices=["none", "system", "cuda"],
        default="none",
        help="perf_analyzer input/output transport; cuda needs a GPU server",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    work = common.work_folder(args, "dcam-bench-")
    run = common.benchmark_run(work, args.size)
    repos = {layout: build(run, work, layout) for layout in ("ensemble", "fused")}
    threads = BuildConfig(run_dir="", out="").session_threads(2)
    proc = InProcess(repos["ensemble"], threads)
    images = common.production_images(args.images, args.size)
    paths = common.production_files(work / "line", args.images, args.size)
    batches = () if args.batches == "none" else tuple(int(b) for b in args.batches.split(","))
    out = common.RESULTS / f"perf-{args.tag}"
    runs: list[dict] = []
    with (
        TritonServer(ServerConfig(repos["ensemble"], ready_timeout_s=180)) as ens,
        TritonServer(ServerConfig(repos["fused"], ready_timeout_s=180)) as fused,
    ):
        servers = {"ensemble": ens, "fused": fused}
        result = measure(proc, servers, images, paths, work, args.rounds)
        if batches:
            out.mkdir(parents=True, exist_ok=True)
            inputs = perf_inputs(work, images[:32], proc)
            for layout, entries in zip(servers, plan(batches), strict=True):
                runs += perf.sweep(
                    servers[layout], layout, entries, inputs, out,
                    args.shared_memory, args.sweep_interval_ms,
                )["runs"]  # fmt: skip
    flops = 2 * common.flops_per_image(args.size)
    gflops = max(common.matmul_gflops(threads=None), common.conv_gflops())
    payload = {
        **common.stamp(),
        "tag": args.tag,
        "size": args.size,
        "images": args.images,
        "rounds": args.rounds,
        "threads_per_session": threads,
        "sweep": {"batches": list(batches), "interval_ms": args.sweep_interval_ms},
        "floor": {
            "gflop_per_image_pair": flops / 1e9,
            "best_gflops": gflops,
            "images_per_s": gflops * 1e9 / flops,
        },
        **summarise(result),
        "interleaved": result,
        "postprocess_maths_images_per_s": postprocess_maths_speed(proc, images[:8]),
        "runs": runs,
    }
    write_curves(runs, payload, args)
    common.publish(f"throughput-{args.tag}", payload, report)
    return payload


def write_curves(runs: list[dict], payload: dict, args: argparse.Namespace) -> None:
    """The sweeps' rows as CSV (with the fraction of the floor) and as a plot."""
    rows = perf.summary_rows(runs)
    if not rows:
        return
    for r in rows:
        r["fraction_of_floor"] = r["images_per_s"] / payload["floor"]["images_per_s"]
    with (common.RESULTS / f"throughput-{args.tag}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    machine = payload["machine"]
    title = (
        f"dcam {args.size}px on {machine['cpu']} ({machine['cores']} cores), Triton 2.51 CPU, "
        f"shm={args.shared_memory}"
    )
    perf.plot(rows, common.RESULTS / f"throughput-{args.tag}.png", title)


def report(payload: dict) -> str:
    floor = payload["floor"]
    rates = payload["images_per_s"]
    maths = payload["postprocess_maths_images_per_s"]
    lines = [
        f"# Throughput ({payload['tag']})",
        "",
        f"{payload['images']} images at {payload['size']} px per configuration and round, "
        f"batch 8, 4 requests in flight for the served ones; {payload['rounds']} interleaved "
        f"rounds; commit {payload['commit']}, {payload['machine']['cores']} cores.",
        "",
        *rounds.ratio_rows(payload["ratios"], payload["targets"]),
        "",
        *cpu_accounting.cpu_rows(payload["cpu_s_per_image"], rates),
        "",
        f"Floor: {floor['gflop_per_image_pair']:.2f} GFLOP per image (teacher + student), "
        f"best measured {floor['best_gflops']:.0f} GFLOP/s -> {floor['images_per_s']:.1f} "
        "images/s; as fractions of it: "
        + ", ".join(f"{k} {v / floor['images_per_s']:.3f}" for k, v in rates.items())
        + ".",
        "",
        f"Post-processing maths on the CPU: numpy {maths['numpy']:.0f} images/s, "
        f"torch {maths['torch_cpu']:.0f} images/s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
