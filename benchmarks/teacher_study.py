"""Teacher study: rank pretrained teachers with the patch nearest-neighbour probe, in minutes.

Each teacher (a `dcam-teacher pretrain` output folder, or `random`) is probed with AdaBN
(`dcam-teacher probe`, as `dcam-train` adapts it) on several generated data sets of the
accuracy benchmark's kind, so a ranking does not rest on one draw of 30 test images a product.
Writes `benchmarks/results/teacher-study-<tag>.{json,md}`: per data set and product, the mean,
and each teacher's pretraining record (data, images seen, resolution, held-out accuracy).

Run: `.venv/bin/python benchmarks/teacher_study.py --teacher NAME=FOLDER ...`
(about 30 s per teacher and data set on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dcam.datasets.synthetic import generate_dataset
from dcam.teacher.config import ProbeConfig
from dcam.teacher.probe import probe
from dcam.teacher.shipped import SHIPPED_TEACHERS, shipped_weights_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--teacher",
        action="append",
        required=True,
        help="NAME=FOLDER (holding teacher.pt and teacher.json), NAME=formula or NAME=fractal "
        "(shipped) or NAME=random; repeat per teacher",
    )
    p.add_argument("--data-seeds", default="7,11", help="one generated data set per seed")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=40, help="good training images per category")
    p.add_argument("--work", default="runs/teacher-study")
    p.add_argument("--tag", default=time.strftime("%Y%m%d"))
    p.add_argument("--results", default=str(Path(__file__).parent / "results"))
    return p.parse_args(argv)


def _probe_config(spec: str, data: Path, size: int) -> tuple[str, ProbeConfig, dict]:
    name, _, where = spec.partition("=")
    if where in (*SHIPPED_TEACHERS, "random"):
        info = {}
        if where in SHIPPED_TEACHERS:
            sidecar = shipped_weights_path(where, "resnet18").with_suffix(".json")
            info = {"data": "fractal", **json.loads(sidecar.read_text())}
        return name, ProbeConfig(data=str(data), teacher=where, image_size=size), info
    folder = Path(where)
    info = json.loads((folder / "teacher.json").read_text())
    cfg = ProbeConfig(data=str(data), teacher_weights=str(folder / "teacher.pt"), image_size=size)
    return name, cfg, info


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results: dict = {"teachers": {}, "data_seeds": [], "per_data": {}}
    for seed in [int(s) for s in args.data_seeds.split(",")]:
        data = Path(args.work) / f"data-{seed}"
        if not (data / "dataset.json").exists():
            generate_dataset(
                data, n_train=args.n_train, size=args.image_size, seed=seed, force=True
            )
        results["data_seeds"].append(seed)
        for spec in args.teacher:
            name, cfg, info = _probe_config(spec, data, args.image_size)
            results["teachers"][name] = {"spec": spec, "pretraining": info}
            t0 = time.perf_counter()
            result = probe(cfg)
            results["per_data"].setdefault(name, {})[str(seed)] = result
            print(
                f"{name} on data seed {seed}: {100 * result['mean_image_auroc']:.1f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    for name, runs in results["per_data"].items():
        results["teachers"][name]["mean"] = float(
            np.mean([r["mean_image_auroc"] for r in runs.values()])
        )
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"teacher-study-{args.tag}.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (out / f"teacher-study-{args.tag}.md").write_text(text)
    print(text)
    return results


def markdown(results: dict) -> str:
    names = list(results["teachers"])
    seeds = [str(s) for s in results["data_seeds"]]
    lines = [
        "# Teacher study (probe image AUROC with AdaBN, %)\n",
        "| teacher | data | images seen | px | held-out top-1 | "
        + " | ".join(f"data seed {s}" for s in seeds)
        + " | **mean** |",
        "|---" * (6 + len(seeds)) + "|",
    ]
    for name in names:
        info = results["teachers"][name]["pretraining"]
        cells = [f"{100 * results['per_data'][name][s]['mean_image_auroc']:.1f}" for s in seeds]
        lines.append(
            f"| {name} | {info.get('data', '-')} | {info.get('images_seen', '-')} | "
            f"{info.get('resolution', '-')} | {info.get('accuracy', '-')} | "
            + " | ".join(cells)
            + f" | **{100 * results['teachers'][name]['mean']:.1f}** |"
        )
    for s in seeds:
        cats = list(results["per_data"][names[0]][s]["per_category"])
        lines += [
            f"\n## Data seed {s}, per product\n",
            "| product | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for c in cats:
            cells = [f"{100 * results['per_data'][n][s]['per_category'][c]:.1f}" for n in names]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
