"""Accuracy benchmark: STFPM baseline, cosine + spatial KL, and each DCAM reading, side by side.

Every configuration trains on the same generated multi-class data with the same budget, over
several seeds. Writes `benchmarks/results/accuracy-<tag>.{json,md}`: per category and mean image
AUROC, pixel AUROC and PRO (mean over seeds with the seed spread), and differences to STFPM.
Offline the teacher is one of the shipped license-clean ones (`formula` by default, `fractal`)
or random (`--teachers formula,random` compares them); all understate what an ImageNet teacher
gives (see benchmarks/README.md).

Run: `.venv/bin/python benchmarks/accuracy.py` (about 25 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from dcam.datasets.synthetic import generate_dataset
from dcam.training.config import TrainConfig
from dcam.training.model import Student
from dcam.training.train import train

CONFIGS = {
    "stfpm": {"dcam": "none", "losses": ("l2",)},
    "cos+kl": {"dcam": "none", "losses": ("cosine", "kl")},
    "dcam-side": {"dcam": "channel", "dcam_mode": "side", "losses": ("cosine", "kl")},
    "dcam-mask": {"dcam": "channel", "dcam_mode": "mask", "losses": ("cosine", "kl")},
    "dcam-inline": {"dcam": "channel", "dcam_mode": "inline", "losses": ("cosine", "kl")},
    # AdaBN: the teacher's BatchNorm statistics re-estimated on the training good images.
    "stfpm+adabn": {"dcam": "none", "losses": ("l2",), "adapt_teacher_bn": True},
    "dcam-mask+adabn": {
        "dcam": "channel",
        "dcam_mode": "mask",
        "losses": ("cosine", "kl"),
        "adapt_teacher_bn": True,
    },
}
METRICS = ("image_auroc", "pixel_auroc", "pro")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--n-train", type=int, default=40, help="good training images per category")
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument(
        "--teachers",
        default="formula",
        help="comma-separated teacher sources (formula, fractal, random, imagenet) to compare",
    )
    p.add_argument("--teacher-weights", default=None)
    p.add_argument("--work", default="runs/bench-accuracy")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="take finished runs of the same configuration from --work instead of retraining",
    )
    p.add_argument("--tag", default=time.strftime("%Y%m%d"))
    return p.parse_args()


def finished_run(cfg: TrainConfig) -> dict | None:
    """The manifest of a finished run with exactly this configuration, else None.

    With --reuse, an interrupted benchmark, or one given more seeds, trains only what is missing.
    """
    out = Path(cfg.out)
    if not (out / "manifest.json").is_file() or not (out / "config.json").is_file():
        return None
    if json.loads((out / "config.json").read_text()) != json.loads(json.dumps(cfg.to_dict())):
        return None
    return json.loads((out / "manifest.json").read_text())


def inline_latency_ratio(size: int) -> float:
    """Inference time of the inline student (blocks kept) over the plain student, batch 8."""
    torch.manual_seed(0)
    plain = Student("resnet18", [64, 128, 256], "none", "mask").eval()
    inline = Student("resnet18", [64, 128, 256], "channel", "inline").eval()
    x = torch.randn(8, 3, size, size)
    times = {}
    with torch.no_grad():
        for name, net in (("plain", plain), ("inline", inline)):
            net(x)
            start = time.perf_counter()
            for _ in range(5):
                net(x)
            times[name] = time.perf_counter() - start
    return times["inline"] / times["plain"]


def summarise(results: dict) -> dict:
    """Mean and spread over seeds, per configuration, category and metric."""
    table: dict = {}
    for name, runs in results.items():
        cats = [*list(runs[0]["per_category"]), "mean"]
        table[name] = {}
        for cat in cats:
            rows = [r["per_category"][cat] if cat != "mean" else r["mean"] for r in runs]
            table[name][cat] = {
                m: {
                    "mean": float(np.mean([r[m] for r in rows])),
                    "spread": float(np.ptp([r[m] for r in rows])),
                }
                for m in METRICS
            }
    return table


def markdown(table: dict, meta: dict) -> str:
    names = list(table)
    base = names[0]
    out = [
        f"Teacher: {meta['teacher']}; data seed {meta['data_seed']}; seeds {meta['seeds']}; "
        f"{meta['epochs']} epochs at {meta['image_size']} px; {meta['minutes']:.1f} min.\n",
        "Cells: mean over seeds (range over seeds), in %; Δ = difference to "
        f"{base} on the mean row.\n",
    ]
    for metric in METRICS:
        out += [
            f"\n### {metric}\n",
            "| category | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for cat in table[base]:
            cells = [
                f"{100 * table[n][cat][metric]['mean']:.1f} "
                f"({100 * table[n][cat][metric]['spread']:.1f})"
                for n in names
            ]
            out.append(f"| {cat} | " + " | ".join(cells) + " |")
        deltas = [
            f"{100 * (table[n]['mean'][metric]['mean'] - table[base]['mean'][metric]['mean']):+.1f}"
            for n in names
        ]
        out.append("| Δ mean | " + " | ".join(deltas) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    args = parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work)
    data = work / "data"
    if not (data / "dataset.json").exists():
        generate_dataset(
            data,
            n_train=args.n_train,
            size=args.image_size,
            seed=args.data_seed,
            progress=True,
            force=True,
        )
    start = time.perf_counter()
    results: dict = {}
    teachers = args.teachers.split(",")
    for teacher, name in [(t, n) for t in teachers for n in args.configs.split(",")]:
        key = name if len(teachers) == 1 else f"{name}/{teacher}"
        results[key] = []
        for seed in seeds:
            cfg = TrainConfig(
                data=(str(data),),
                out=str(work / f"{key.replace('/', '-')}-s{seed}"),
                teacher=teacher,
                teacher_weights=args.teacher_weights,
                image_size=args.image_size,
                epochs=args.epochs,
                seed=seed,
                sigma=args.image_size / 64,
                **CONFIGS[name],
            )
            t0 = time.perf_counter()
            manifest = finished_run(cfg) if args.reuse else None
            manifest = manifest or train(cfg, force=True)
            results[key].append(manifest["metrics"])
            print(
                f"{key} seed {seed}: mean {manifest['metrics']['mean']} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    meta = {
        "teacher": args.teacher_weights or args.teachers,
        "seeds": seeds,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "data_seed": args.data_seed,
        "minutes": (time.perf_counter() - start) / 60,
        "inline_latency_ratio": inline_latency_ratio(args.image_size),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], text=True, capture_output=True
        ).stdout.strip(),
    }
    table = summarise(results)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"accuracy-{args.tag}.json").write_text(
        json.dumps({"meta": meta, "table": table, "runs": results}, indent=2)
    )
    text = markdown(table, meta) + (
        f"\nInline control: student inference "
        f"{meta['inline_latency_ratio']:.2f}x the plain student.\n"
    )
    (out / f"accuracy-{args.tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
