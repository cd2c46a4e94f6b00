"""What a results table of accuracy.py leaves out, read back from the trained runs themselves:
each run's best epoch, training seconds, and served decisions under per-product calibration.

The size study quotes these (benchmarks/README.md, issue 23); accuracy.py's JSON keeps only the
metrics. Run: `.venv/bin/python benchmarks/run_facts.py runs/size-192-e20/*-s? --tag T`.
Writes `benchmarks/results/run-facts-<tag>.{json,md}`.
"""

from __future__ import annotations

import json
from pathlib import Path

import common


def facts(run: Path) -> dict:
    """One run's manifest and report, reduced to what the tables quote."""
    manifest = json.loads((run / "manifest.json").read_text())
    report = json.loads((run / "report.json").read_text())
    served = report["calibration_readings"]["per_product"]
    training = manifest["training"]
    return {
        "image_size": json.loads((run / "config.json").read_text())["image_size"],
        "epochs": len(training["history"]),
        "best_epoch": training["best_epoch"],
        "seconds": training["seconds"],
        "image_auroc": manifest["metrics"]["mean"]["image_auroc"],
        "pro": manifest["metrics"]["mean"]["pro"],
        "served_tpr": served["true_positive_rate"],
        "served_fpr": served["false_positive_rate"],
    }


def report(payload: dict) -> str:
    lines = [
        "| run | size | best epoch | training s | image AUROC | PRO | served TPR / FPR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in payload["runs"].items():
        lines.append(
            f"| {name} | {f['image_size']} | {f['best_epoch']} of {f['epochs']} | "
            f"{f['seconds']:.0f} | {100 * f['image_auroc']:.1f} | {100 * f['pro']:.1f} | "
            f"{100 * f['served_tpr']:.1f}% / {100 * f['served_fpr']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = common.run_folder_arguments(__doc__)
    runs = {f"{run.parent.name}/{run.name}": facts(run) for run in args.runs}
    common.publish(f"run-facts-{args.tag}", {"runs": runs, "stamp": common.stamp()}, report)


if __name__ == "__main__":
    main()
