"""The accuracy benchmark's FP16 check (benchmarks/fp16_accuracy.py) on the tiny run."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from dcam.build.config import BuildConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fp16_accuracy

pytest.importorskip("modelopt.onnx.autocast")

COSINE_OPS = {"ReduceSum", "Sqrt", "Div"}  # norms and division of the teacher-student cosine


@pytest.fixture(scope="module")
def checked(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("fp16")
    return fp16_accuracy.fp16_check(tiny_run, work), work


def test_fp16_graph_keeps_the_backbones_in_fp16_and_the_cosine_and_max_in_fp32(
    checked: tuple[dict, Path],
) -> None:
    import onnx

    from dcam.build.precision import precision_summary

    check, work = checked
    summary = precision_summary(onnx.load(str(work / "fused.fp16.onnx")))
    assert summary == check["precision"]
    assert summary["fp16"]["Conv"] > 0 and "Conv" not in summary["fp32"]
    assert summary["fp32"]["ReduceMax"] > 0 and "ReduceMax" not in summary["fp16"]
    assert set(summary["fp32"]) >= COSINE_OPS and not COSINE_OPS & set(summary["fp16"])


def test_both_fp16_graphs_err_a_little_and_differently(checked: tuple[dict, Path]) -> None:
    check, _ = checked
    emulated, graph = check["map_error"]["fp16_emulated"], check["map_error"]["fp16_graph"]
    # ONNX Runtime runs the FP16 graph's layers in FP32, so that graph carries only the weights'
    # rounding; the emulation adds the stored activations', so the two errors differ. Which is
    # larger depends on one pixel (the max of a map): on larger runs they swap by a few percent
    # (benchmarks/README.md, FP16 section), so only the order of magnitude is asserted.
    for errors in (emulated, graph):
        assert 0 < errors["max_rel"] < BuildConfig.fp16_tolerance
    assert emulated["max_abs"] != graph["max_abs"]
    assert check["score_error"]["fp16_emulated"]["max_abs"] > 0


def test_auroc_change_is_emulated_minus_fp32_on_the_runs_test_split(
    checked: tuple[dict, Path],
) -> None:
    check, _ = checked
    auroc = check["image_auroc"]
    assert check["images"] == 26 and check["anomalous"] == 20  # 2 x (3 good + 5 defects x 2)
    assert all(0.0 <= v <= 1.0 for v in auroc.values())
    # The FP32 graph scores the images training evaluated: PyTorch's AUROC, recomputed.
    assert auroc["fp32"] == pytest.approx(auroc["pytorch"], abs=1e-9)
    for name in ("fp16_graph", "fp16_emulated"):
        assert check["change_points"][name] == pytest.approx(100 * (auroc[name] - auroc["fp32"]))
    flagged = any(abs(v) >= fp16_accuracy.TARGET_POINTS for v in check["change_points"].values())
    assert check["over_target"] is flagged


def test_summary_over_seeds_flags_a_seed_past_the_target(checked: tuple[dict, Path]) -> None:
    check, _ = checked
    worse = copy.deepcopy(check)
    worse["image_auroc"]["fp16_emulated"] = check["image_auroc"]["fp32"] - 0.002
    worse["change_points"]["fp16_emulated"] = -0.2
    worse["over_target"] = True
    table = fp16_accuracy.summarise({"a": [check, check], "b": [check, worse]})
    change = check["change_points"]["fp16_emulated"]
    assert table["a"]["change_emulated"] == {"mean": pytest.approx(change), "spread": 0.0}
    assert table["b"]["change_emulated"]["mean"] == pytest.approx((change - 0.2) / 2)
    assert table["b"]["change_emulated"]["spread"] == pytest.approx(abs(change + 0.2))
    assert table["a"]["over_target"] is check["over_target"] and table["b"]["over_target"]
    text = fp16_accuracy.markdown(table, {"c": "not buildable"})
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| a |") and rows[2].endswith("| **Δ ≥ 0.1** |")
    assert rows[3].startswith("| c | not built: not buildable |")
    assert {line.count("|") for line in rows} == {12}
