"""What the line metrics cost: dcam-client end to end against the same model built with and
without them (`--no-line-metrics`), both served at once and measured in interleaved rounds,
so a noisy neighbour hits both alike.

Every image costs the post-processing stub one histogram observation, and every batch a few
counter and gauge updates. Each is a message from the Python stub to the server. Writes
benchmarks/results/line-metrics-cost-<tag>.{json,md}.

Run: `.venv/bin/python benchmarks/line_metrics_cost.py` (about 5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common
from client_transport import client_rate

from dcam.build.config import BuildConfig
from dcam.build.engines import build_repository
from dcam.serve.server import ServerConfig, TritonServer

BUILDS = {"metrics_on": True, "metrics_off": False}


def measure(repos: dict[str, Path], paths: list[Path], work: Path, rounds: int) -> dict:
    rates: dict[str, list[float]] = {name: [] for name in repos}
    with (
        TritonServer(ServerConfig(repos["metrics_on"], ready_timeout_s=180)) as on,
        TritonServer(ServerConfig(repos["metrics_off"], ready_timeout_s=180)) as off,
    ):
        urls = {"metrics_on": on.grpc_url, "metrics_off": off.grpc_url}
        for url in urls.values():  # warm-up: the first requests load the sessions
            asyncio.run(client_rate(url, paths[:16], work / "w.jsonl", 8, "none"))
        for r in range(rounds):
            order = list(urls) if r % 2 == 0 else list(reversed(urls))
            for name in order:
                out = work / f"{name}-{r}.jsonl"
                rates[name].append(asyncio.run(client_rate(urls[name], paths, out, 8, "none")))
            print(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items())
            )
    return rates


def report(payload: dict) -> str:
    m = payload["images_per_s"]
    return "\n".join(
        [
            f"# What the line metrics cost ({payload['tag']})",
            "",
            f"{payload['images']} PNG files at {payload['size']} px, {payload['layout']} layout, "
            f"batch 8, 4 requests in flight, median of {payload['rounds']} interleaved rounds; "
            f"commit {payload['stamp']['commit']}, {payload['stamp']['machine']['cores']} cores.",
            "",
            "| build | images/s |",
            "|---|---|",
            f"| line metrics on (default) | {m['metrics_on']:.1f} |",
            f"| `--no-line-metrics` | {m['metrics_off']:.1f} |",
            "",
            f"On over off: {payload['on_over_off']:.3f}.",
            "",
        ]
    )


def main() -> None:
    args, work, run = common.client_load_setup(__doc__, rounds=7)
    repos = {}
    for name, on in BUILDS.items():
        repos[name] = work / name
        if not repos[name].exists():
            cfg = BuildConfig(
                run_dir=str(run), out=str(repos[name]), target="cpu", layout=args.layout,
                line_metrics=on,
            )  # fmt: skip
            build_repository(cfg)
    paths = common.production_files(work / "line", args.images, args.size)
    rates = measure(repos, paths, work, args.rounds)
    median = {k: statistics.median(v) for k, v in rates.items()}
    payload = {
        **common.client_load_head(args, len(paths)),
        "images_per_s": median,
        "rates": rates,
        "on_over_off": median["metrics_on"] / median["metrics_off"],
    }
    common.publish(f"line-metrics-cost-{args.tag}", payload, report)


if __name__ == "__main__":
    main()
