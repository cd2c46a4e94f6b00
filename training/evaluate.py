"""The in-process reference: anomaly maps from teacher and student, metrics, and thresholds.

Reads decoded images; writes per-category image AUROC, pixel AUROC, PRO and F1-max (JSON and a
Markdown table) and the score normalisation and decision thresholds the manifest carries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dcam.core import scoring
from dcam.core.anomaly_map import anomaly_map, image_scores
from dcam.core.metrics import auroc, f1_max, pro_score
from dcam.core.scoring import ScoringSpec
from dcam.datasets.layout import Sample
from dcam.training.config import TrainConfig
from dcam.training.model import Normalize


@torch.no_grad()
def predict_maps(
    teacher: nn.Module,
    student: nn.Module,
    images: np.ndarray,
    combine: str = TrainConfig.combine,
    sigma: float = TrainConfig.sigma,
    batch_size: int = 16,
    device: str = "cpu",
) -> np.ndarray:
    """Anomaly maps (N, H, W) of uint8 NHWC images, features in torch, map maths in numpy."""
    normalize = Normalize().to(device)
    teacher.eval()
    student.eval()
    maps = []
    for start in range(0, len(images), batch_size):
        x = normalize(torch.from_numpy(images[start : start + batch_size]).to(device))
        t_feats = [f.float().cpu().numpy() for f in teacher(x)]
        s_feats = [f.float().cpu().numpy() for f in student(x)]
        maps.append(anomaly_map(t_feats, s_feats, images.shape[1:3], combine, sigma))
    return np.concatenate(maps) if maps else np.zeros((0, *images.shape[1:3]), np.float32)


def _category_metrics(
    labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray
) -> dict:
    result = {"n_good": int((~labels).sum()), "n_anomalous": int(labels.sum())}
    if labels.all() or not labels.any():
        return result
    result["image_auroc"] = auroc(labels, scores)
    result["f1_max"] = f1_max(labels, scores)[0]
    if masks.any():
        result["pixel_auroc"] = auroc(masks.ravel(), maps.ravel())
        result["pro"] = pro_score(masks, maps)
    return result


def category_metrics(
    labels: np.ndarray, cats: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray
) -> dict:
    """Image AUROC, pixel AUROC, PRO and F1-max per category, and their mean over categories:
    the one rule every reported metric follows (training's report, benchmarks' rescoring)."""
    per_category = {}
    for c in sorted(set(cats)):
        sel = cats == c
        per_category[c] = _category_metrics(labels[sel], scores[sel], masks[sel], maps[sel])
    keys = ("image_auroc", "pixel_auroc", "pro", "f1_max")
    rows = per_category.values()
    mean = {
        k: float(np.mean([r[k] for r in rows if k in r])) for k in keys if any(k in r for r in rows)
    }
    return {"per_category": per_category, "mean": mean}


def evaluate(
    samples: Sequence[Sample], maps: np.ndarray, masks: np.ndarray, spec: ScoringSpec
) -> dict:
    """Metrics per category and their mean, plus decision quality at the global threshold."""
    labels = np.array([s.is_anomalous for s in samples])
    cats = np.array([s.category for s in samples])
    scores = np.asarray(image_scores(maps))
    report = category_metrics(labels, cats, scores, masks, maps)
    report["calibration_readings"] = calibration_readings(labels, cats, scores, spec)
    report["decisions_at_global_threshold"] = {
        k: report["calibration_readings"]["global"][k]
        for k in ("true_positive_rate", "false_positive_rate")
    }
    return report


def calibration_readings(
    labels: np.ndarray, categories: np.ndarray, scores: np.ndarray, spec: ScoringSpec
) -> dict:
    """Pooled image AUROC and TPR/FPR at the shipped threshold, under the global calibration
    and under each product's own: what one threshold for all products costs.

    The served model applies the same two readings: without and with the request parameter
    `category`.
    """
    readings = {}
    for name, own in (("global", False), ("per_product", True)):
        z, decided = np.empty(len(scores)), np.empty(len(scores), bool)
        for c in np.unique(categories):
            sel = categories == c
            calibration = spec.calibration_for(str(c) if own else None)
            z[sel], decided[sel] = scoring.judge(calibration, scores[sel])
        both = labels.any() and (~labels).any()
        readings[name] = {
            "pooled_image_auroc": auroc(labels, z) if both else None,
            "true_positive_rate": float(decided[labels].mean()) if labels.any() else None,
            "false_positive_rate": float(decided[~labels].mean()) if (~labels).any() else None,
        }
    return readings


def markdown_table(report: dict) -> str:
    """The report as a Markdown table, one row per category and a mean row."""
    keys = ("image_auroc", "pixel_auroc", "pro", "f1_max")
    lines = ["| category | image AUROC | pixel AUROC | PRO | F1-max |", "|---|---|---|---|---|"]

    def row(name: str, values: dict) -> str:
        cells = [f"{100 * values[k]:.2f}" if k in values else "-" for k in keys]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines += [row(c, v) for c, v in report["per_category"].items()]
    lines.append(row("**mean**", report["mean"]))
    readings = report.get("calibration_readings")
    if readings:
        lines += [
            "",
            "| calibration | pooled image AUROC | TPR at threshold | FPR at threshold |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {name} | " + " | ".join(_percent(r[k]) for k in READING_KEYS) + " |"
            for name, r in readings.items()
        ]
    return "\n".join(lines) + "\n"


READING_KEYS = ("pooled_image_auroc", "true_positive_rate", "false_positive_rate")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
