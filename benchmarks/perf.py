"""perf_analyzer throughput runs against the served model repository, the way Triton users do.

Against a running embedded tritonserver, runs perf_analyzer over gRPC against the
ensemble and each composing model alone (real generated images, not zeros), across batch sizes
and concurrencies, and collects perf_analyzer's CSVs, one summary CSV and Triton's per-model
statistics. These are curves (throughput against latency), not evidence for ratios: one
sweep runs after another, and the machine drifts between them (throughput.py's rounds).
"""

from __future__ import annotations

import base64
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from dcam.serve.server import TritonServer


def perf_analyzer_env() -> dict[str, str]:
    """perf_analyzer from the tritonclient 2.51 wheel needs libcudart.so.12 even on CPU."""
    import nvidia.cuda_runtime

    lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


def perf_analyzer_path() -> Path:
    path = Path(sys.executable).parent / "perf_analyzer"
    if not path.exists():
        raise FileNotFoundError(
            "perf_analyzer is missing: pip install -e '.[bench]' (tritonclient's wheel carries it)"
        )
    return path


def write_input_data(path: Path, tensors: list[dict[str, np.ndarray]]) -> Path:
    """perf_analyzer --input-data JSON: one entry per batch item, base64 raw tensors."""
    data = [
        {
            name: {
                "b64": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode(),
                "shape": list(a.shape),
            }
            for name, a in item.items()
        }
        for item in tensors
    ]
    path.write_text(json.dumps({"data": data}))
    return path


def run_perf(
    model: str,
    url: str,
    batch: int,
    concurrency: str,
    input_data: Path,
    csv_path: Path,
    shared_memory: str = "none",
    interval_ms: int = 6000,
) -> list[dict]:
    """One perf_analyzer sweep over a concurrency range; returns its CSV rows."""
    # Large batches take long per request: widen the window so it holds enough of them.
    interval_ms = max(interval_ms, 400 * batch)
    cmd = [
        str(perf_analyzer_path()),
        "-m",
        model,
        "-u",
        url,
        "-i",
        "grpc",
        "-b",
        str(batch),
        "--concurrency-range",
        concurrency,
        "--input-data",
        str(input_data),
        "--shared-memory",
        shared_memory,
        "--percentile=99",
        "-p",
        str(interval_ms),
        "-s",
        "25",
        "-r",
        "8",
        "-f",
        str(csv_path),
    ]
    if shared_memory != "none":
        cmd += ["--output-shared-memory-size", str(64 << 20)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=perf_analyzer_env())
    if result.returncode != 0:
        raise RuntimeError(
            f"perf_analyzer failed ({result.returncode}): {' '.join(cmd)}\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
        )
    with csv_path.open() as fh:
        return list(csv.DictReader(fh))


STAT_KEYS = ("requests", "request_ns", "queue_ns", "compute_ns")


def model_stats(url: str) -> dict[str, dict]:
    """Triton's cumulative per-model statistics (request counts and nanoseconds)."""
    import tritonclient.http as http

    stats = http.InferenceServerClient(url).get_inference_statistics()
    out: dict[str, dict] = {}
    for m in stats["model_stats"]:  # one entry per model *version*: a polling server may list
        inf = m["inference_stats"]  # several of a model, so each model's counters are summed
        entry = out.setdefault(m["name"], dict.fromkeys(STAT_KEYS, 0))
        entry["requests"] += inf["success"]["count"]
        entry["request_ns"] += inf["success"]["ns"]
        entry["queue_ns"] += inf["queue"]["ns"]
        entry["compute_ns"] += sum(
            inf[k]["ns"] for k in ("compute_input", "compute_infer", "compute_output")
        )
    return out


def stats_counters(urls: dict[str, str]) -> dict[str, float]:
    """`model_stats` of each server (label -> HTTP url) flattened to "<label>/<model>/<counter>":
    cumulative counters, a probe for `rounds.interleave`."""
    return {
        f"{label}/{model}/{key}": value
        for label, url in urls.items()
        for model, stats in model_stats(url).items()
        for key, value in stats.items()
    }


def queue_ms_per_request(deltas: list[dict[str, float]]) -> dict[str, float]:
    """From per-round differences of `stats_counters`: the median over rounds of each model's
    mean queue time per request in ms, for the models ("<label>/<model>") that had requests."""
    out = {}
    for key in deltas[0] if deltas else {}:
        if key.endswith("/queue_ns"):
            model = key.removesuffix("/queue_ns")
            count = f"{model}/requests"
            rounds = [d[key] / d[count] / 1e6 for d in deltas if d.get(count)]
            if rounds:
                out[model] = statistics.median(rounds)
    return out


def stats_delta(before: dict, after: dict) -> dict:
    return {
        name: {k: after[name][k] - before.get(name, {}).get(k, 0) for k in after[name]}
        for name in after
    }


def sweep(
    server: TritonServer,
    layout: str,
    plan: list[dict],
    inputs: dict[str, Path],
    out: Path,
    shared_memory: str = "none",
    interval_ms: int = 6000,
) -> dict:
    """Run every entry of `plan` ({model, batch, concurrency}) against the running `server` of
    repository `layout`; per entry the perf_analyzer rows and the Triton statistics accumulated
    during it."""
    results = []
    for entry in plan:
        name = f"{layout}-{entry['model']}-b{entry['batch']}-shm{shared_memory}"
        before = model_stats(server.http_url)
        try:
            rows = run_perf(
                entry["model"],
                server.grpc_url,
                entry["batch"],
                entry["concurrency"],
                inputs[entry["model"]],
                out / f"{name}.csv",
                shared_memory,
                interval_ms,
            )
        except RuntimeError as exc:  # one unstable configuration must not lose the rest
            print(f"{name}: {str(exc).splitlines()[-1]}", flush=True)
            results.append(
                {
                    **entry,
                    "layout": layout,
                    "error": str(exc)[-2000:],
                    "shared_memory": shared_memory,
                    "rows": [],
                    "stats": {},
                }
            )
            continue
        stats = stats_delta(before, model_stats(server.http_url))
        results.append(
            {
                **entry,
                "layout": layout,
                "shared_memory": shared_memory,
                "rows": rows,
                "stats": stats,
            }
        )
        best = max(float(r["Inferences/Second"]) for r in rows)
        print(f"{name}: best {best:.1f} inferences/s", flush=True)
    return {"runs": results}


def summary_rows(runs: list[dict]) -> list[dict]:
    """One flat row per (configuration, concurrency): throughput and p99 latency."""
    rows = []
    for run in runs:
        for r in run["rows"]:
            rows.append(
                {
                    "layout": run["layout"],
                    "model": run["model"],
                    "batch": run["batch"],
                    "shared_memory": run["shared_memory"],
                    "concurrency": int(r["Concurrency"]),
                    "images_per_s": float(r["Inferences/Second"]),
                    "p99_latency_ms": float(r["p99 latency"]) / 1000.0,
                }
            )
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Throughput against p99 latency, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    keys = sorted({(r["layout"], r["model"], r["batch"], r["shared_memory"]) for r in rows})
    for key in keys:
        pts = sorted(
            (r["p99_latency_ms"], r["images_per_s"], r["concurrency"])
            for r in rows
            if (r["layout"], r["model"], r["batch"], r["shared_memory"]) == key
        )
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="o",
            label=f"{key[0]}/{key[1]} b{key[2]}" + (f" shm={key[3]}" if key[3] != "none" else ""),
        )
        for lat, thr, conc in pts:
            ax.annotate(
                f"c{conc}", (lat, thr), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("images / s")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
