"""How the drift statistic behaves on synthetic lines: the PSI of each product's good test parts,
as they are and shifted (15% brighter, 15% darker, a 1-pixel blur), per seed.

Each seed generates a line, trains a tiny run that holds out 20 good images per product for
calibration, and scores 300 good parts per product in-process with the served rule
(core/scoring.py), then feeds the unflagged z-scores to the drift window (core/drift.py) with the
default settings. The PSI is reported once the window is full, so a shift that flags most parts
reads 0 here; the anomaly rate beside it shows that case. Writes
benchmarks/results/drift-study-<tag>.{json,md}.

Run: `.venv/bin/python benchmarks/drift_study.py` (about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))
import common

from dcam.build.export import load_feature_net
from dcam.core import drift
from dcam.core.manifest import Manifest
from dcam.core.scoring import score
from dcam.datasets.synthetic import generate_dataset
from dcam.training.config import TrainConfig
from dcam.training.train import train

CATEGORIES = ("carpet", "nut")
SHIFTS = {
    "as made": lambda image: image,
    "15% brighter": lambda image: ImageEnhance.Brightness(image).enhance(1.15),
    "15% darker": lambda image: ImageEnhance.Brightness(image).enhance(0.85),
    "1 px blur": lambda image: image.filter(ImageFilter.GaussianBlur(1)),
}


def study_seed(work: Path, seed: int, good: int) -> dict:
    root = work / f"seed-{seed}"
    generate_dataset(root / "data", categories=list(CATEGORIES), n_train=40, n_test_good=good,
                     n_test_per_defect=0, size=64, seed=seed)  # fmt: skip
    cfg = TrainConfig(data=(str(root / "data"),), out=str(root / "run"), epochs=2,
                      image_size=64, batch_size=8, teacher="random", device="cpu", sigma=2.0,
                      min_val_per_category=20)  # fmt: skip
    train(cfg, force=True)
    manifest = Manifest.read(root / "run")
    nets = [load_feature_net(root / "run", manifest, role) for role in ("teacher", "student")]
    rows = {}
    for category in CATEGORIES:
        paths = sorted((root / "data" / category / "test" / "good").glob("*.png"))
        images = [Image.open(p).convert("RGB") for p in paths]
        threshold = manifest.scoring.calibration_for(category).threshold
        for name, shift in SHIFTS.items():
            batch = torch.from_numpy(np.stack([np.asarray(shift(i)) for i in images]))
            with torch.no_grad():
                scored = score(manifest.scoring, *(list(net(batch)) for net in nets),
                               category=category)  # fmt: skip
            z, flagged = np.asarray(scored.normalised), np.asarray(scored.decisions)
            window = drift.DriftWindow(drift.DriftSpec(), threshold)
            window.add(z[~flagged])
            reading = window.reading()
            rows[f"{category} / {name}"] = {
                "psi": reading.psi,
                "alarm": reading.alarm,
                "anomaly_rate": float(flagged.mean()),
                "normal_mean": reading.mean,
                "window": reading.filled,
            }
            print(seed, category, name, rows[f"{category} / {name}"], flush=True)
    return rows


def report(payload: dict) -> str:
    seeds = payload["seeds"]
    lines = [
        f"# Drift on synthetic lines ({payload['tag']})",
        "",
        f"PSI of {payload['good']} good parts per product against the calibration's law "
        f"(window {drift.DriftSpec.window}, alarm {drift.DriftSpec.alarm}); anomaly rate in "
        f"brackets; `-`: the window did not fill. Commit {payload['stamp']['commit']}.",
        "",
        "| product / line | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for key in next(iter(seeds.values())):
        cells = []
        for rows in seeds.values():
            r = rows[key]
            psi = f"{r['psi']:.2f}" if r["window"] == drift.DriftSpec.window else "-"
            cells.append(f"{psi}{' ALARM' if r['alarm'] else ''} ({100 * r['anomaly_rate']:.0f}%)")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    p.add_argument("--good", type=int, default=300)
    p.add_argument("--tag", default=time.strftime("%Y%m%d"))
    p.add_argument("--work", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    work = common.work_folder(args, "dcam-drift-")
    seeds = {seed: study_seed(work, seed, args.good) for seed in args.seeds}
    payload = {"tag": args.tag, "good": args.good, "stamp": common.stamp(), "seeds": seeds}
    common.publish(f"drift-study-{args.tag}", payload, report)


if __name__ == "__main__":
    main()
