"""Read-out levers on trained runs, without retraining: the map's smoothing relative to the input
size, and how the feature levels are weighed when their maps are combined.

A student that copies its teacher too well on defects, or a map that drowns a small defect in
one level's noise, both cost image AUROC the teacher's features would allow (issue 23). The
second is a read-out choice: each run's teacher and student features of its held-out good and
test images are computed once, then every variant's maps and metrics come from them.

- `sigma S`: the rule as served (sum of per-level `1 - cos`, upsampled), smoothed by S pixels.
- `level-norm`: each level's map divided by its mean on the run's held-out good images before
  the sum, so no level's baseline dominates (smoothing as dcam-train's default).
- `layer2+3`: layer1 left out (its 1/4-scale map is the noisiest).
- `channel-std`: `1 - cos` of features standardised by the teacher's per-channel mean and std on
  the run's training goods (the read-out that matches training with `--feature-norm channel`).

Run: `.venv/bin/python benchmarks/levers.py runs/size-128/*-s? --tag T` (runs of accuracy.py).
Writes `benchmarks/results/levers-<tag>.{json,md}`: image AUROC, pixel AUROC and PRO per run
size and variant, mean over the runs of each configuration (range over runs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import common
import numpy as np
import torch

from dcam.build.export import load_feature_net
from dcam.core.anomaly_map import cosine_distance, gaussian_smooth, image_scores, resize_bilinear
from dcam.core.manifest import Manifest
from dcam.datasets.layout import load_images, load_masks
from dcam.training.config import TrainConfig
from dcam.training.evaluate import category_metrics
from dcam.training.levers import channel_statistics

METRICS = ("image_auroc", "pixel_auroc", "pro")


@torch.no_grad()
def level_maps(teacher, student, images: np.ndarray, stats: list | None = None) -> dict[str, list]:
    """Per level, `1 - cos` of the run's teacher and student at the level's own scale: "plain",
    and "channel-std" on features standardised by `stats` (per level: channel mean, std)."""
    levels: dict[str, list[list[np.ndarray]]] = {"plain": [], "channel-std": []}
    for start in range(0, len(images), 16):
        x = torch.from_numpy(images[start : start + 16])
        pairs = zip(teacher(x), student(x), strict=True)
        for i, (t, s) in enumerate(pairs):
            if len(levels["plain"]) <= i:
                levels["plain"].append([])
                levels["channel-std"].append([])
            levels["plain"][i].append(cosine_distance(t.numpy(), s.numpy()))
            if stats is not None:
                mean, std = stats[i]
                unit_t, unit_s = (t.numpy() - mean) / std, (s.numpy() - mean) / std
                levels["channel-std"][i].append(cosine_distance(unit_t, unit_s))
    return {k: [np.concatenate(level) for level in v if level] for k, v in levels.items()}


def teacher_channel_stats(teacher, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per level, the teacher's per-channel mean and std over every pixel of `images`: training's
    own rule (`--feature-norm channel`) on the run's teacher."""
    stats = channel_statistics(teacher.net, images, 16, torch.device("cpu"))
    return [(mean.numpy(), std.numpy()) for mean, std in stats]


def variant_maps(levels, good_levels, size: int, default_sigma: float) -> dict[str, np.ndarray]:
    """Each read-out variant's full-size maps from the per-level maps (level_maps' output)."""
    up = [resize_bilinear(level, (size, size)) for level in levels["plain"]]
    plain = sum(up)
    means = [float(level.mean()) for level in good_levels["plain"]]
    variants = {f"sigma {s:g}": gaussian_smooth(plain, s) for s in (0, 2, 4, 8, 16)}
    variants["level-norm"] = gaussian_smooth(
        sum(u / m for u, m in zip(up, means, strict=True)), default_sigma
    )
    variants["layer2+3"] = gaussian_smooth(up[1] + up[2], default_sigma)
    if levels["channel-std"]:
        unit = sum(resize_bilinear(level, (size, size)) for level in levels["channel-std"])
        variants["channel-std"] = gaussian_smooth(unit, default_sigma)
    return variants


def metrics(maps: np.ndarray, labels: np.ndarray, masks: np.ndarray, cats: np.ndarray) -> dict:
    """Mean over products of image AUROC, pixel AUROC and PRO, by training's own rule."""
    mean = category_metrics(labels, cats, np.asarray(image_scores(maps)), masks, maps)["mean"]
    return {m: mean[m] for m in METRICS}


def rescore(run: Path) -> dict:
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    splits = cfg.splits()
    size = cfg.image_size
    manifest = Manifest.read(run)
    teacher = load_feature_net(run, manifest, "teacher")
    student = load_feature_net(run, manifest, "student")
    stats = teacher_channel_stats(teacher, load_images(splits.train, size))
    levels = level_maps(teacher, student, load_images(splits.test, size), stats)
    good_levels = level_maps(teacher, student, load_images(splits.val, size))
    labels = np.array([s.is_anomalous for s in splits.test])
    cats = np.array([s.category for s in splits.test])
    masks = load_masks(splits.test, size)
    maps = variant_maps(levels, good_levels, size, cfg.sigma)
    return {"size": size, "variants": {k: metrics(v, labels, masks, cats) for k, v in maps.items()}}


def summarise(results: dict[str, dict]) -> dict:
    """Per (size, configuration): each variant's mean and range over the runs (seeds)."""
    groups: dict[str, list[dict]] = {}
    for name, result in results.items():  # name: <work folder>/<configuration>-s<seed>
        config = name.rsplit("/", 1)[-1].rsplit("-s", 1)[0]
        groups.setdefault(f"{result['size']} px {config}", []).append(result)
    table = {}
    for group, runs in groups.items():
        table[group] = {
            variant: {
                m: {
                    "mean": float(np.mean([r["variants"][variant][m] for r in runs])),
                    "range": float(np.ptp([r["variants"][variant][m] for r in runs])),
                }
                for m in METRICS
            }
            for variant in runs[0]["variants"]
        }
    return table


def report(payload: dict) -> str:
    out = [
        f"Runs: {len(payload['runs'])}; {payload['minutes']:.1f} min. Mean over seeds (range), %.\n"
    ]
    for group, variants in payload["table"].items():
        out += [
            f"\n### {group}\n",
            "| read-out | image AUROC | pixel AUROC | PRO |",
            "|---|---|---|---|",
        ]
        for variant, values in variants.items():
            cells = [
                f"{100 * values[m]['mean']:.1f} ({100 * values[m]['range']:.1f})" for m in METRICS
            ]
            out.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    args = common.run_folder_arguments(__doc__)
    torch.set_num_threads(2)
    start = time.perf_counter()
    results = {}
    for run in args.runs:
        t0 = time.perf_counter()
        results[f"{run.parent.name}/{run.name}"] = rescore(run)
        print(f"{run}: {time.perf_counter() - t0:.0f} s", flush=True)
    payload = {
        "runs": results,
        "table": summarise(results),
        "minutes": (time.perf_counter() - start) / 60,
        "stamp": common.stamp(),
    }
    common.publish(f"levers-{args.tag}", payload, report)


if __name__ == "__main__":
    main()
