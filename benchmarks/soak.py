"""Soak: 10,000 images through `dcam-serve` and `dcam-client`, heatmaps off then on, watching
memory, latency and what is left after shutdown. Not a CI test: a line runs for weeks, and this
is how we look for slow leaks.

Both commands run as a user runs them (subprocesses of the installed entry points). Every
`--every` seconds the sampler reads the resident memory (VmRSS) of the tritonserver process, each
Python-backend stub and the client. The client's results file gives each request's latency in
completion order, so latency percentiles come per thousand images. After the server stops, the
stub processes and /dev/shm regions still present are counted.

Targets (issue 12): memory growth under 5% after warm-up, no leftover processes or regions,
p99 latency stable within 20%. Writes benchmarks/results/soak-<tag>.{json,md,png}.

Run: `.venv/bin/python benchmarks/soak.py` (about 15 minutes at 128 px on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import common
from throughput import build

from dcam.client.shm import PREFIX as CLIENT_REGIONS
from dcam.serve.server import free_port
from dcam.serve.shm import REGION_PREFIX, SHM_DIR

BIN = Path(sys.executable).parent
WARM_UP = 1000  # images before memory and latency count


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def processes() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgid, name) of every process this user can read."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        found.append((int(stat.parent.name), int(fields[1]), int(fields[2]), name))
    return found


def server_tree(serve_pid: int) -> dict[str, int]:
    """tritonserver (the child dcam-serve started in its own group) and that group's stubs."""
    procs = processes()
    triton = [p for p, ppid, _, name in procs if ppid == serve_pid and name == "tritonserver"]
    if not triton:
        return {}
    tree = {"tritonserver": triton[0]}
    for pid, _, pgid, _name in procs:
        if pgid == triton[0] and pid != triton[0]:
            tree[f"stub {stub_model(pid)} {pid}"] = pid
    return tree


def stub_model(pid: int) -> str:
    """The model a Python-backend stub serves: its first argument is <repo>/<model>/<v>/model.py."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return Path(args[1].decode()).parents[1].name
    except (OSError, IndexError):
        return "?"


class Sampler(threading.Thread):
    """Resident memory of the server, its stubs and the client every `every` seconds."""

    def __init__(self, serve_pid: int, client_pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.serve_pid, self.client_pid, self.every = serve_pid, client_pid, every
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(self.every):
            tree = server_tree(self.serve_pid) | {"client": self.client_pid}
            rss = {name: rss_kib(pid) for name, pid in tree.items()}
            self.samples.append({"t": time.monotonic() - start} | rss)


def soak_pass(repo: Path, folder: Path, work: Path, heatmaps: bool, every: float) -> dict:
    """One dcam-serve + one dcam-client run over the folder; memory, latency, leftovers."""
    shm_before = {p.name for p in SHM_DIR.iterdir()}
    ports = [str(free_port()) for _ in range(3)]
    serve = subprocess.Popen(
        [str(BIN / "dcam-serve"), str(repo), "--http-port", ports[0], "--grpc-port", ports[1],
         "--metrics-port", ports[2]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    line = serve.stdout.readline()
    while line and not line.startswith("serving"):
        line = serve.stdout.readline()
    if not line:
        raise RuntimeError(f"dcam-serve did not start: {serve.communicate()[0]}")
    out = work / f"scores-{'heatmaps' if heatmaps else 'plain'}.jsonl"
    cmd = [str(BIN / "dcam-client"), "score", "--dir", str(folder), "--url",
           f"127.0.0.1:{ports[1]}", "--output", str(out), "--force"]  # fmt: skip
    if heatmaps:
        cmd += ["--heatmaps", str(work / "heatmaps")]
    start = time.monotonic()
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(serve.pid, client.pid, every)
    sampler.start()
    client_out = client.communicate()[0]
    seconds = time.monotonic() - start
    sampler.stop.set()
    sampler.join()
    tree = server_tree(serve.pid)
    serve.send_signal(signal.SIGINT)
    serve_out = serve.communicate(timeout=60)[0]
    time.sleep(1)
    alive = [pid for pid in tree.values() if rss_kib(pid) is not None]
    left = sorted(
        p.name
        for p in SHM_DIR.iterdir()
        if p.name not in shm_before and p.name.startswith((REGION_PREFIX, CLIENT_REGIONS))
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    return {
        "heatmaps": heatmaps,
        "seconds": seconds,
        "images": len(rows),
        "failed": sum(bool(r["error"]) for r in rows),
        "client_exit": client.returncode,
        "client_tail": client_out.strip().splitlines()[-3:],
        "serve_tail": serve_out.strip().splitlines()[-3:],
        "processes_left": alive,
        "regions_left": left,
        "samples": sampler.samples,
        "latency_per_thousand": per_thousand([r["latency_ms"] for r in rows if not r["error"]]),
    }


def per_thousand(latencies: list[float]) -> list[dict]:
    chunks = [latencies[i : i + 1000] for i in range(0, len(latencies), 1000)]
    return [
        {
            "p50": float(np.percentile(c, 50)),
            "p99": float(np.percentile(c, 99)),
            "images": 1000 * i + len(c),  # images answered by the end of this chunk
        }
        for i, c in enumerate(chunks)
        if len(c) >= 100
    ]


def memory_growth(samples: list[dict], warm_up_s: float, rate: float) -> dict[str, dict]:
    """Per process: median RSS just after warm-up, median over the last tenth, the growth, and
    the slope over the second half (MiB per 10k images): a leak keeps climbing, an allocator's
    high-water mark steps up once and stays."""
    span = samples[-1]["t"] if samples else 0.0
    growth = {}
    for name in sorted({k for s in samples for k in s} - {"t"}):
        series = [(s["t"], s[name]) for s in samples if s.get(name)]
        early = [v for t, v in series if warm_up_s <= t <= warm_up_s + 0.1 * span]
        late = [v for t, v in series if t >= 0.9 * span]
        if early and late:
            base, end = float(np.median(early)), float(np.median(late))
            half = [(t * rate, v / 1024) for t, v in series if t >= span / 2]
            slope = np.polyfit(*zip(*half, strict=True), 1)[0] * 10_000 if len(half) > 2 else 0.0
            growth[name] = {"after_warm_up_mib": base / 1024, "end_mib": end / 1024,
                            "growth": end / base - 1,
                            "slope_mib_per_10k": float(slope)}  # fmt: skip
    return growth


def judge(result: dict, warm_up: int) -> dict:
    warm_up_s = result["seconds"] * warm_up / max(result["images"], 1)
    rate = result["images"] / result["seconds"]
    growth = memory_growth(result["samples"], warm_up_s, rate)
    p99 = [c["p99"] for c in result["latency_per_thousand"][warm_up // 1000 :]]
    return {
        "memory_growth": growth,
        "max_growth": max((g["growth"] for g in growth.values()), default=float("nan")),
        "p99_spread": max(p99) / min(p99) - 1 if p99 else float("nan"),
        "images_per_s": rate,
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 7), squeeze=False)
    for col, result in enumerate(results):
        title = "heatmaps on" if result["heatmaps"] else "heatmaps off"
        ax = axes[0][col]
        names = sorted({k for s in result["samples"] for k in s} - {"t"})
        for name in names:
            pts = [(s["t"], s[name] / 1024) for s in result["samples"] if s.get(name)]
            ax.plot(*zip(*pts, strict=True), label=name)
        ax.set(title=f"resident memory, {title}", xlabel="s", ylabel="MiB")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        chunks = result["latency_per_thousand"]
        xs = [c["images"] for c in chunks]
        ax.plot(xs, [c["p99"] for c in chunks], "o-", label="p99")
        ax.plot(xs, [c["p50"] for c in chunks], "o-", label="p50")
        ax.set(title=f"request latency per 1000 images, {title}", xlabel="images", ylabel="ms")
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def report(payload: dict) -> str:
    lines = [
        f"# Soak ({payload['tag']})",
        "",
        f"{payload['images']} images ({payload['distinct']} distinct PNG files at "
        f"{payload['size']} px, each linked many times) through `dcam-serve` and `dcam-client` "
        f"(shared memory auto), {payload['layout']} layout; commit {payload['stamp']['commit']}, "
        f"{payload['stamp']['machine']['cores']} cores. Memory growth: the median RSS over the "
        f"last tenth of the run over the median just after the first {payload['warm_up']} "
        "images; slope: a line fitted to the second half of the run.",
        "",
        "| pass | images/s | failed | largest memory growth | p99 spread after warm-up "
        "| processes left | regions left |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in payload["passes"]:
        j = r["judged"]
        lines.append(
            f"| heatmaps {'on' if r['heatmaps'] else 'off'} | {j['images_per_s']:.1f} | "
            f"{r['failed']} | {100 * j['max_growth']:+.1f}% | {100 * j['p99_spread']:.1f}% | "
            f"{len(r['processes_left'])} | {len(r['regions_left'])} |"
        )
    lines += ["", "| pass | process | MiB after warm-up | MiB at the end | growth "
              "| slope, MiB per 10k images |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in payload["passes"]:
        for name, g in r["judged"]["memory_growth"].items():
            lines.append(
                f"| heatmaps {'on' if r['heatmaps'] else 'off'} | {name} | "
                f"{g['after_warm_up_mib']:.0f} | {g['end_mib']:.0f} | {100 * g['growth']:+.1f}% | "
                f"{g['slope_mib_per_10k']:+.1f} |"
            )
    lines += ["", "Targets: growth under 5%, p99 spread within 20%, nothing left.", ""]
    return "\n".join(lines)


def line_folder(work: Path, images: int, distinct: int, size: int) -> Path:
    """`images` paths: `distinct` PNG files, each reached through many symlinks."""
    sources = work / "sources"
    sources.mkdir(exist_ok=True)
    for i, img in enumerate(common.production_images(distinct, size, seed=3)):
        Image.fromarray(img).save(sources / f"part-{i:04d}.png")
    folder = work / "line"
    folder.mkdir(exist_ok=True)
    for i in range(images):
        link = folder / f"part-{i:05d}.png"
        if not link.is_symlink():
            os.symlink(sources / f"part-{i % distinct:04d}.png", link)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--distinct", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--every", type=float, default=2.0, help="seconds between memory samples")
    p.add_argument("--warm-up", type=int, default=WARM_UP, help="images before memory counts")
    p.add_argument("--heatmaps", default="off,on", help="passes: off, on or off,on")
    common.add_run_arguments(p)
    args = p.parse_args()
    work = common.work_folder(args, "dcam-soak-")
    repo = build(common.benchmark_run(work, args.size), work, args.layout)
    folder = line_folder(work, args.images, args.distinct, args.size)
    passes = []
    for heatmaps in (mode == "on" for mode in args.heatmaps.split(",")):
        result = soak_pass(repo, folder, work, heatmaps, args.every)
        result["judged"] = judge(result, args.warm_up)
        passes.append(result)
        print(f"heatmaps {heatmaps}: {json.dumps(result['judged'])}", flush=True)
    payload = {
        "tag": args.tag, "images": args.images, "distinct": args.distinct, "size": args.size,
        "layout": args.layout, "warm_up": args.warm_up, "stamp": common.stamp(),
        "passes": passes,
    }  # fmt: skip
    stem = common.publish(f"soak-{args.tag}", payload, report)
    plot(passes, stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
