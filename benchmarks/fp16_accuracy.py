"""FP16 graph against FP32 on a training run's test split: what `--target trt` costs in accuracy.

Reads a run (`manifest.json`, `config.json`, the weights) and its data's test split, the images
the accuracy benchmark scores. Exports the fused graph as `dcam-build` does, converts it to FP16
(build/precision.py) and runs the FP32 graph, the FP16 graph and the FP16 emulation with ONNX
Runtime on the CPU. Returns the anomaly map errors and image AUROCs, aggregated over seeds and
rendered for the accuracy report by `summarise` and `markdown`; writes only the graphs, to a
temporary folder unless one is given.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dcam.build.config import BuildConfig
from dcam.build.export import export_onnx, fused_net
from dcam.build.parity import onnxruntime_session, output_errors
from dcam.build.precision import convert_fp16, fp16_emulation
from dcam.build.simplify import simplify_onnx
from dcam.core.errors import DcamError
from dcam.core.manifest import Manifest
from dcam.core.metrics import auroc
from dcam.core.names import ANOMALY_MAP, FUSED_MODEL, IMAGE, RAW_SCORE
from dcam.datasets.layout import load_images
from dcam.training.config import TrainConfig

TARGET_POINTS = 0.1  # the bound on the image AUROC change, in points
GRAPHS = ("fp32", "fp16_graph", "fp16_emulated")
OUTPUTS = [ANOMALY_MAP, RAW_SCORE]
OPSET = BuildConfig.opset  # the build's default


def export_fused(run_dir: Path, work: Path) -> Path:
    """The run's fused graph, exported and simplified as `dcam-build --layout fused` does."""
    manifest = Manifest.read(run_dir)
    net = fused_net(run_dir, manifest)
    raw = export_onnx(
        net, work / f"{FUSED_MODEL}.raw.onnx", OUTPUTS, list(manifest.input_size), OPSET
    )
    simple = work / f"{FUSED_MODEL}.onnx"
    simplify_onnx(raw, simple)
    return simple


def load_test_split(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, is_anomalous, category) of the test split the run was evaluated on."""
    cfg = TrainConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    splits = cfg.splits()
    if not splits.test:
        raise DcamError(f"{run_dir}: its data {cfg.data} has no test split to compare on")
    images = load_images(splits.test, cfg.image_size, "loading test")
    labels = np.array([s.is_anomalous for s in splits.test])
    return images, labels, np.array([s.category for s in splits.test])


def run_graph(model, images: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Both outputs of a graph (a path or a ModelProto) on the CPU, in batches."""
    session = onnxruntime_session(model if isinstance(model, Path) else model.SerializeToString())
    parts = [
        session.run(OUTPUTS, {IMAGE: images[i : i + batch_size]})
        for i in range(0, len(images), batch_size)
    ]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(OUTPUTS)}


def image_auroc(labels: np.ndarray, categories: np.ndarray, scores: np.ndarray) -> float:
    """Mean over categories of the image AUROC, as the benchmark's `image_auroc` column."""
    values = [
        auroc(labels[sel], scores[sel])
        for sel in (categories == c for c in np.unique(categories))
        if labels[sel].any() and not labels[sel].all()
    ]
    if not values:
        raise DcamError("no category of the test split has both good and anomalous images")
    return float(np.mean(values))


def prepare_autocast() -> None:
    """Refuse early, before minutes of training, where ModelOpt's AutoCast is missing."""
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except ImportError as exc:
        raise DcamError(
            f"the FP16 check needs NVIDIA ModelOpt's AutoCast (dcam's build extra): {exc}; "
            "install it or pass --no-fp16"
        ) from exc


def fp16_check(run_dir: Path, work: Path | None = None) -> dict:
    """FP32, FP16 and emulated FP16 graphs of one run on its test split.

    Args:
        run_dir: A finished training run whose `config.json` names its data.
        work: Folder that keeps the FP32 and FP16 graphs (default: a temporary one).

    Returns:
        The FP16 graph's precision summary, max abs/rel errors of map and raw score against
        FP32, each graph's image AUROC (and PyTorch's, from the manifest), the changes in
        points (FP16 minus FP32) and whether any change reaches TARGET_POINTS.
    """
    run_dir = Path(run_dir)
    prepare_autocast()
    images, labels, categories = load_test_split(run_dir)
    with tempfile.TemporaryDirectory(prefix="dcam-fp16-") as tmp:
        folder = Path(work or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = export_fused(run_dir, folder)
        fp16 = folder / f"{FUSED_MODEL}.fp16.onnx"
        precision = convert_fp16(fp32, fp16)
        models = {"fp32": fp32, "fp16_graph": fp16, "fp16_emulated": fp16_emulation(fp32)}
        outputs = {name: run_graph(model, images) for name, model in models.items()}
    ref = outputs["fp32"]
    errors = {
        name: output_errors([ref[o] for o in OUTPUTS], [outputs[name][o] for o in OUTPUTS], OUTPUTS)
        for name in GRAPHS[1:]
    }
    aurocs = {
        name: image_auroc(labels, categories, outputs[name][RAW_SCORE].ravel()) for name in GRAPHS
    }
    change = {name: 100 * (aurocs[name] - aurocs["fp32"]) for name in GRAPHS[1:]}
    metrics = json.loads((run_dir / "manifest.json").read_text()).get("metrics", {})
    return {
        "images": len(images),
        "anomalous": int(labels.sum()),
        "precision": precision,
        "map_error": {name: e[ANOMALY_MAP] for name, e in errors.items()},
        "score_error": {name: e[RAW_SCORE] for name, e in errors.items()},
        "image_auroc": {"pytorch": metrics.get("mean", {}).get("image_auroc"), **aurocs},
        "change_points": change,
        "over_target": any(abs(v) >= TARGET_POINTS for v in change.values()),
    }


# Per-run fields aggregated over seeds: column name -> path into fp16_check's result.
FIELDS = {
    "map_abs_fp16_graph": ("map_error", "fp16_graph", "max_abs"),
    "map_rel_fp16_graph": ("map_error", "fp16_graph", "max_rel"),
    "map_abs_emulated": ("map_error", "fp16_emulated", "max_abs"),
    "map_rel_emulated": ("map_error", "fp16_emulated", "max_rel"),
    "auroc_fp32": ("image_auroc", "fp32"),
    "auroc_fp16_graph": ("image_auroc", "fp16_graph"),
    "auroc_emulated": ("image_auroc", "fp16_emulated"),
    "change_fp16_graph": ("change_points", "fp16_graph"),
    "change_emulated": ("change_points", "fp16_emulated"),
}


def _field(check: dict, path: tuple[str, ...]) -> float:
    value: Any = check
    for key in path:
        value = value[key]
    return float(value)


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Mean and range over seeds of every field, per configuration; flagged if any seed's
    change reaches TARGET_POINTS."""
    table = {}
    for name, checks in runs.items():
        row: dict = {
            field: {
                "mean": float(np.mean([_field(c, path) for c in checks])),
                "spread": float(np.ptp([_field(c, path) for c in checks])),
            }
            for field, path in FIELDS.items()
        }
        row["over_target"] = any(c["over_target"] for c in checks)
        table[name] = row
    return table


def markdown(table: dict, skipped: dict[str, str]) -> str:
    """The FP16 section of the accuracy report."""
    out = [
        "\n### FP16 graph vs FP32 (fused graph, ONNX Runtime on the CPU, test split)\n",
        "Cells: mean over seeds (range over seeds). Map errors against the FP32 graph; image "
        "AUROC in %, mean over categories; Δ = FP16 minus FP32 in points; flagged when any "
        f"seed's |Δ| >= {TARGET_POINTS}. The emulation (FP16 weights and stored activations) "
        "stands in for a TensorRT FP16 engine; ONNX Runtime runs the FP16 graph's layers in "
        "FP32, so that graph's error is the FP16 weights' alone.\n",
        "| configuration | map max abs, FP16 graph | map max rel, FP16 graph "
        "| map max abs, emulated | map max rel, emulated | AUROC FP32 | AUROC FP16 graph "
        "| AUROC emulated | Δ FP16 graph | Δ emulated | flag |",
        "|---" * 11 + "|",
    ]
    for name, row in table.items():
        errors = [f"{row[f]['mean']:.1e} ({row[f]['spread']:.1e})" for f in list(FIELDS)[:4]]
        aurocs = [
            f"{100 * row[f]['mean']:.2f} ({100 * row[f]['spread']:.2f})"
            for f in ("auroc_fp32", "auroc_fp16_graph", "auroc_emulated")
        ]
        changes = [
            f"{row[f]['mean']:+.2f} ({row[f]['spread']:.2f})"
            for f in ("change_fp16_graph", "change_emulated")
        ]
        flag = f"**Δ ≥ {TARGET_POINTS}**" if row["over_target"] else "ok"
        out.append(f"| {name} | " + " | ".join([*errors, *aurocs, *changes, flag]) + " |")
    out += [f"| {name} | not built: {reason} |" + " |" * 9 for name, reason in skipped.items()]
    return "\n".join(out) + "\n"
