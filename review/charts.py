"""The station's two charts as inline SVG, drawn on the server: no chart library, no build chain.

The histogram stacks each bin's parts by what the labels say (defect, good, unlabelled) and draws
the served threshold (solid) and a proposed one (dashed). The ROC curve is drawn once both kinds
are labelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

from dcam.review import fit

WIDTH, HEIGHT, PAD = 640, 200, 28
COLOURS = {"defect": "#c0392b", "good": "#27ae60", None: "#95a5a6"}


def _x(value: float, low: float, high: float) -> float:
    return PAD + (value - low) / max(high - low, 1e-9) * (WIDTH - 2 * PAD)


def histogram(
    parts: Sequence[fit.Part],
    threshold: float | None,
    proposed: float | None = None,
    bins: int = 40,
) -> str:
    """Score histogram of one product, stacked by label, with the threshold lines."""
    if not parts:
        return "<p>No parts scored.</p>"
    scores = np.array([p.score for p in parts])
    marks = [v for v in (threshold, proposed) if v is not None]
    low, high = min([float(scores.min()), *marks]), max([float(scores.max()), *marks])
    low, high = low - 0.05 * (high - low or 1), high + 0.05 * (high - low or 1)
    edges = np.linspace(low, high, bins + 1)
    which = np.clip(np.digitize(scores, edges) - 1, 0, bins - 1)
    counts = {k: np.bincount(which[[p.label == k for p in parts]], minlength=bins) for k in COLOURS}
    tallest = max(int(sum(c[i] for c in counts.values())) for i in range(bins)) or 1
    unit = (HEIGHT - 2 * PAD) / tallest
    bar = (WIDTH - 2 * PAD) / bins
    shapes = []
    for i in range(bins):
        y = HEIGHT - PAD
        for label, colour in COLOURS.items():
            h = counts[label][i] * unit
            if h:
                y -= h
                shapes.append(
                    f'<rect x="{PAD + i * bar:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" '
                    f'height="{h:.1f}" fill="{colour}"><title>{counts[label][i]} '
                    f"{label or 'unlabelled'}, score {edges[i]:.2f} to {edges[i + 1]:.2f}"
                    "</title></rect>"
                )
    lines = ((threshold, "threshold", "", 0), (proposed, "proposed", "6,4", 14))
    for value, name, dash, drop in lines:  # the labels one under the other where lines meet
        if value is not None:
            x = _x(value, low, high)
            shapes.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PAD / 2}" y2="{HEIGHT - PAD}" '
                f'stroke="#2c3e50" stroke-width="2" stroke-dasharray="{dash}" '
                f'data-role="{name}"/><text x="{x + 4:.1f}" y="{PAD / 2 + 8 + drop}" '
                f'font-size="11">{name} {value:.2f}</text>'
            )
    axis = (
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="11">{low:.1f}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="11" text-anchor="end">'
        f"{high:.1f}</text>"
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" font-size="11" text-anchor="middle">'
        "score (z)</text>"
    )
    return _svg("histogram", "".join(shapes) + axis)


def roc_curve(roc: fit.Roc | None) -> str:
    """The ROC of labelled defects against goods, or a sentence saying what is missing."""
    if roc is None:
        return "<p>The ROC needs at least one labelled defect and one good part.</p>"
    size = HEIGHT - 2 * PAD
    points = " ".join(
        f"{PAD + f * size:.1f},{HEIGHT - PAD - t * size:.1f}"
        for f, t in zip(roc.fpr, roc.tpr, strict=True)
    )
    body = (
        f'<rect x="{PAD}" y="{PAD}" width="{size}" height="{size}" fill="none" stroke="#bbb"/>'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{PAD + size}" y2="{PAD}" stroke="#ddd"/>'
        f'<polyline points="{points}" fill="none" stroke="#2c3e50" stroke-width="2"/>'
        f'<text x="{PAD + size + 10}" y="{PAD + 12}" font-size="12">AUROC {100 * roc.auc:.1f}'
        f"</text>"
        f'<text x="{PAD + size + 10}" y="{PAD + 28}" font-size="11">{roc.defects} defects, '
        f"{roc.goods} goods</text>"
        f'<text x="{PAD + size / 2}" y="{HEIGHT - 8}" font-size="11" text-anchor="middle">'
        "false-call rate</text>"
    )
    return _svg("roc", body, width=PAD + size + 200)


def _svg(role: str, body: str, width: int = WIDTH) -> str:
    return (
        f'<svg role="img" aria-label="{escape(role)}" data-chart="{escape(role)}" '
        f'viewBox="0 0 {width} {HEIGHT}" width="{width}" height="{HEIGHT}">{body}</svg>'
    )
