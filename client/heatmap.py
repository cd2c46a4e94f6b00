"""Heatmap PNGs: the anomaly map over the image, with a colour scale, for people who would
rather look than read.

One colour scale per product, from its calibration, the same for every image of a run: a good
part looks cool and a broken one hot, where a per-image scale made both look equally hot. The
decision threshold is marked on the colour bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dcam.core.scoring import ScoringSpec

_JET_STOPS = np.array([[0, 0, 0.5], [0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0], [0.5, 0, 0]])


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB through a jet-like colour map."""
    pos = np.clip(values, 0, 1) * (len(_JET_STOPS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_JET_STOPS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _JET_STOPS[lo] * (1 - frac) + _JET_STOPS[lo + 1] * frac
    return (rgb * 255).astype(np.uint8)


@dataclass(frozen=True)
class HeatmapScale:
    """Map values vmin..vmax to the colour bar; `threshold` is where the decision flips."""

    vmin: float
    vmax: float
    threshold: float


def product_scale(spec: ScoringSpec, category: str | None) -> HeatmapScale:
    """A product's scale in anomaly-map units: from 3 std below its good parts' typical score
    (cool) to 3 std past its threshold (hot). A pixel at the threshold level is what makes an
    image score exactly the threshold, since the image score is the map's maximum."""
    return HeatmapScale(*spec.calibration_for(category).heatmap_scale(3.0))


def render_heatmap(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    score: float,
    is_anomalous: bool,
    scale: HeatmapScale,
    alpha: float = 0.45,
) -> Image.Image:
    """Overlay (left) beside the plain image (right), with a colour bar and the verdict below."""
    vmin, vmax = scale.vmin, scale.vmax
    zoom = max(1, -(-256 // anomaly_map.shape[1]))  # small models: enlarge for reading
    height, width = anomaly_map.shape[0] * zoom, anomaly_map.shape[1] * zoom
    base = np.asarray(Image.fromarray(image).resize((width, height)), dtype=np.float32)
    big_map = np.asarray(
        Image.fromarray(anomaly_map.astype(np.float32)).resize((width, height), Image.BILINEAR)
    )
    norm = (big_map - vmin) / max(vmax - vmin, 1e-12)
    overlay = (base * (1 - alpha) + colorize(norm).astype(np.float32) * alpha).astype(np.uint8)
    bar_h = 34
    canvas = Image.new("RGB", (2 * width, height + bar_h), "white")
    canvas.paste(Image.fromarray(overlay), (0, 0))
    canvas.paste(Image.fromarray(base.astype(np.uint8)), (width, 0))
    ramp = colorize(np.tile(np.linspace(0, 1, width), (10, 1)))
    canvas.paste(Image.fromarray(ramp), (0, height + 2))
    draw = ImageDraw.Draw(canvas)
    draw.text((0, height + 14), f"{vmin:.3g}", fill="black")
    draw.text((width - 30, height + 14), f"{vmax:.3g}", fill="black")
    x = round((scale.threshold - vmin) / max(vmax - vmin, 1e-12) * (width - 1))
    draw.line([(x, height), (x, height + 13)], fill="black", width=2)
    draw.text((min(max(x - 24, 32), width - 84), height + 14), "threshold", fill="black")
    verdict = "ANOMALOUS" if is_anomalous else "ok"
    draw.text(
        (width + 4, height + 8),
        f"score {score:.2f}  {verdict}",
        fill="red" if is_anomalous else "darkgreen",
    )
    return canvas


def heatmap_path(folder: Path, image_path: str, root: Path | None) -> Path:
    """Mirror the input's relative path under the heatmap folder, as a .png."""
    rel = Path(image_path)
    if root is not None:
        try:
            rel = rel.relative_to(root)
        except ValueError:
            rel = Path(rel.name)
    return Path(folder) / rel.with_suffix(".png")
