"""A scored line for the review station's tests, written as dcam-client writes one: images in
product folders, heatmap PNGs mirroring them, and a JSONL results file. Scores are drawn so that
defects score higher than good parts, with an overlap, and the served threshold is 2.0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

PRODUCTS = ("bolt", "gear")
THRESHOLD = 2.0


def write_line(root: Path, n_good: int = 16, n_defect: int = 8, seed: int = 0) -> dict:
    """Images, heatmaps and `scores.jsonl` under root; returns their paths and each image's
    truth ("good" or "defect") by path."""
    rng = np.random.default_rng(seed)
    line, heatmaps = root / "line", root / "heatmaps"
    rows, truth = [], {}
    for product in PRODUCTS:
        for kind, n, centre in (("good", n_good, 0.5), ("crack", n_defect, 2.8)):
            for i in range(n):
                rel = Path(product) / "test" / kind / f"{i:03d}.png"
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                for folder in (line, heatmaps):
                    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pixels).save(folder / rel)
                score = float(rng.normal(centre, 1.0))
                path = str(line / rel)
                truth[path] = "good" if kind == "good" else "defect"
                rows.append(
                    {
                        "path": path,
                        "category": product,
                        "score": score,
                        "is_anomalous": score > THRESHOLD,
                        "error": None,
                        "retryable": None,
                        "latency_ms": 5.0,
                        "path_escaped": False,
                    }
                )
    results = root / "scores.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"results": results, "heatmaps": heatmaps, "line": line, "truth": truth, "rows": rows}
