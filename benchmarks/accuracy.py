"""Accuracy benchmark: STFPM baseline, cosine + spatial KL, and each DCAM reading, side by side.

Every configuration trains on the same generated multi-class data with the same budget, over
several seeds. Writes `benchmarks/results/accuracy-<tag>.{json,md}`: per category and mean image
AUROC, pixel AUROC and PRO (mean over seeds with the seed spread), and differences to STFPM.
With `--fp16` (the default) each run's fused graph is also converted to FP16 as `--target trt`
builds it and compared with FP32 on the same test images (fp16_accuracy.py): map error and
image AUROC change, flagged at 0.1 point.
Offline the teacher is one of the shipped license-clean ones (`formula` by default, `fractal`)
or random (`--teachers formula,random` compares them); all understate what an ImageNet teacher
gives (see benchmarks/README.md).

Run: `.venv/bin/python benchmarks/accuracy.py`: dcam-train's defaults (input size, epochs),
the default DCAM against STFPM, 3 seeds, the teacher probe beside them (about 20 minutes on 2
CPU cores with the FP16 check's export, conversion and three graph runs per run; `--no-fp16`
skips it). `--configs` names the other readings and issue 23's training-side levers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common
import fp16_accuracy
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
# Issue 23's training-side levers, each on top of the default (dcam-mask+adabn).
LEVERS = {
    "cosine-lr": {"lr_schedule": "cosine"},
    "channel-norm": {"feature_norm": "channel"},
    "deep-levels": {"level_weights": (0.5, 1.0, 2.0)},
    "shallow-levels": {"level_weights": (2.0, 1.0, 0.5)},
    "photometric": {"augment": "photometric"},
    "flip": {"augment": "flip"},
}
# What a run without --configs compares: the default and the baseline it is judged against
# (about 20 min at dcam-train's defaults on 2 cores; the other readings on request).
DEFAULT_CONFIGS = ("stfpm+adabn", "dcam-mask+adabn")
CONFIGS.update(
    {f"dcam-mask+adabn+{k}": {**CONFIGS["dcam-mask+adabn"], **v} for k, v in LEVERS.items()}
)
METRICS = ("image_auroc", "pixel_auroc", "pro")
# Configurations dcam-build refuses, so without an FP16 graph to check.
UNBUILDABLE = {"dcam-inline": "its student keeps the DCAM blocks, which dcam-build refuses"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated, of {', '.join(CONFIGS)}",
    )
    p.add_argument("--seeds", default="0,1,2")
    # dcam-train's own defaults: what a user gets is what the benchmark measures (issue 23).
    p.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--n-train", type=int, default=40, help="good training images per category")
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument(
        "--teachers",
        default="formula",
        help="comma-separated teacher sources (formula, fractal, random, imagenet) to compare",
    )
    p.add_argument("--teacher-weights", default=None)
    p.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="map smoothing in pixels [default: dcam-train's, the same at every size]",
    )
    p.add_argument(
        "--probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the teacher probe on the same data: the probe-to-student gap column",
    )
    p.add_argument("--work", default="runs/bench-accuracy")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="take finished runs of the same configuration from --work instead of retraining",
    )
    p.add_argument("--tag", default=time.strftime("%Y%m%d"))
    p.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compare each run's FP16 fused graph with FP32 on the test images",
    )
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


def teacher_probe(data: Path, teacher: str, weights: str | None, size: int) -> dict:
    """What the frozen teacher's features allow on this data: `dcam-teacher probe` (patch kNN
    after the same AdaBN the students get), image AUROC per product and mean, timed."""
    from dcam.teacher.config import ProbeConfig
    from dcam.teacher.probe import probe

    t0 = time.perf_counter()
    config = ProbeConfig(data=str(data), teacher=teacher, teacher_weights=weights, image_size=size)
    result = probe(config)
    result["seconds"] = time.perf_counter() - t0
    print(f"probe {teacher}: mean image AUROC {result['mean_image_auroc']:.4f}", flush=True)
    return result


def probe_lines(table: dict, probes: dict[str, dict], teacher_of: dict[str, str]) -> list[str]:
    """The image-AUROC table's probe rows: the teacher probe per product, and the gap from it
    to each configuration's mean (probe minus distilled: what the student leaves unused)."""
    names = list(table)
    cats = list(table[names[0]])
    probe = {n: probes[teacher_of[n]] for n in names}
    cells = [
        f"{100 * probe[names[0]]['per_category'][c]:.1f}"
        if c in probe[names[0]]["per_category"]
        else f"{100 * probe[names[0]]['mean_image_auroc']:.1f}"
        if c == "mean"
        else "-"
        for c in cats
    ]
    gaps = [
        f"{100 * (probe[n]['mean_image_auroc'] - table[n]['mean']['image_auroc']['mean']):+.1f}"
        for n in names
    ]
    return [
        f"| probe-to-student gap | {' | '.join(gaps)} |",
        "",
        f"Teacher probe per product ({teacher_of[names[0]]}): "
        + ", ".join(f"{c} {v}" for c, v in zip(cats, cells, strict=True))
        + ".",
    ]


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
        if metric == "image_auroc" and meta.get("probe"):
            out += probe_lines(table, meta["probe"], meta["teacher_of"])
    return "\n".join(out) + "\n"


def main() -> None:
    args = parse_args()
    if args.fp16:
        fp16_accuracy.prepare_autocast()  # before minutes of training, not after
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
    teacher_of: dict[str, str] = {}
    fp16: dict = {"runs": {}, "skipped": {}}
    teachers = args.teachers.split(",")
    for teacher, name in [(t, n) for t in teachers for n in args.configs.split(",")]:
        key = name if len(teachers) == 1 else f"{name}/{teacher}"
        results[key], teacher_of[key] = [], teacher
        if args.fp16 and name in UNBUILDABLE:
            fp16["skipped"][key] = UNBUILDABLE[name]
        elif args.fp16:
            fp16["runs"][key] = []
        for seed in seeds:
            cfg = TrainConfig(
                data=(str(data),),
                out=str(work / f"{key.replace('/', '-')}-s{seed}"),
                teacher=teacher,
                teacher_weights=args.teacher_weights,
                image_size=args.image_size,
                epochs=args.epochs,
                seed=seed,
                sigma=args.sigma if args.sigma is not None else TrainConfig.sigma,
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
            if key in fp16["runs"]:
                fp16["runs"][key].append(check_fp16(Path(cfg.out), key, seed))
    probes = (
        {}
        if not args.probe
        else {t: teacher_probe(data, t, args.teacher_weights, args.image_size) for t in teachers}
    )
    meta = {
        "teacher": args.teacher_weights or args.teachers,
        "probe": probes,
        "teacher_of": teacher_of,
        "sigma": args.sigma if args.sigma is not None else TrainConfig.sigma,
        "seeds": seeds,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "data_seed": args.data_seed,
        "minutes": (time.perf_counter() - start) / 60,
        "inline_latency_ratio": inline_latency_ratio(args.image_size),
        "commit": common.git_commit(),
        "fp16": args.fp16,
    }
    if args.fp16:
        fp16["table"] = fp16_accuracy.summarise(fp16["runs"])
    payload = {
        "meta": meta,
        "stamp": common.stamp(),
        "table": summarise(results),
        "runs": results,
        "fp16": fp16 if args.fp16 else None,
    }
    common.publish(f"accuracy-{args.tag}", payload, report)


def check_fp16(run: Path, key: str, seed: int) -> dict:
    """fp16_accuracy.fp16_check on one run, timed and printed."""
    t0 = time.perf_counter()
    check = fp16_accuracy.fp16_check(run)
    check["seconds"] = time.perf_counter() - t0
    print(
        f"{key} seed {seed} FP16: map max abs {check['map_error']['fp16_emulated']['max_abs']:.1e} "
        f"(emulated), image AUROC change {check['change_points']['fp16_emulated']:+.2f} points "
        f"emulated, {check['change_points']['fp16_graph']:+.2f} FP16 graph "
        f"({check['seconds']:.0f} s)",
        flush=True,
    )
    return check


def report(payload: dict) -> str:
    """The Markdown report: the metric tables, the inline control and the FP16 section."""
    meta = payload["meta"]
    text = markdown(payload["table"], meta) + (
        f"\nInline control: student inference "
        f"{meta['inline_latency_ratio']:.2f}x the plain student.\n"
    )
    fp16 = payload.get("fp16")
    if fp16:
        text += fp16_accuracy.markdown(fp16["table"], fp16["skipped"])
    return text


if __name__ == "__main__":
    main()
