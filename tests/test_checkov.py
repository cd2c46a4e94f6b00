"""checkov, the policy checker cluster operators run on manifests, over every overlay as it is
applied: deploy/'s CPU and GPU overlays with every component and a namespace, and overlays that
`dcam-build deploy` writes for real builds (whose custom resources also go through their CRDs'
schemas). Zero failed checks, beyond the skip list in deploy/checkov.yaml, where each entry says
why it does not apply. `.ci/checkov.sh` installs it;
under CI a missing checkov fails, elsewhere it skips."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dcam.build.cli import build_group
from tests.kserve_rules import kserve_problems
from tests.test_crd_schemas import is_core, validate
from tests.test_deploy import DEPLOY, components, render
from tests.test_deploy_step import BUCKET, LOADER, _with_report, onnx_repo  # noqa: F401 (fixture)

CHECKOV = Path(__file__).resolve().parents[1] / ".ci" / "checkov-venv" / "bin" / "checkov"
VOLUME = ("--storage", "volume", "--loader-image", LOADER)
EVERY = [c for c in components() if "autoscaling-keda" not in c]  # one autoscaler at a time


def checkov() -> Path:
    if not CHECKOV.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"checkov is not installed at {CHECKOV}: run .ci/checkov.sh")
        pytest.skip("checkov is not installed: run .ci/checkov.sh")
    return CHECKOV


def _wrap(folder: Path, overlay: Path, parts: list[str]) -> str:
    """An overlay in `folder` on `overlay` with the components `parts` and a namespace."""
    folder.mkdir(parents=True)
    rel = [os.path.relpath(p, folder) for p in (overlay, *(DEPLOY / c for c in parts))]
    kustomization = {"namespace": "line", "resources": rel[:1], "components": rel[1:]}
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return str(folder)


def run_checkov(rendered: dict[str, list[dict]], tmp_path: Path) -> dict:
    """checkov over the rendered manifests, one file per overlay; its JSON summary."""
    out = tmp_path / "rendered"
    out.mkdir()
    for name, objects in rendered.items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(objects))
    config = DEPLOY / "checkov.yaml"
    cmd = [str(checkov()), "-d", str(out), "--config-file", str(config), "-o", "json"]
    cmd += ["--skip-download", "--compact", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    summary = {
        "passed": sum(r["summary"]["passed"] for r in reports),
        "failed": [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed],
    }
    return summary


def test_every_overlay_with_every_component_passes(tmp_path: Path) -> None:
    parts = {"cpu": EVERY, "gpu": [c for c in EVERY if c != "components/volume"]}  # has it
    rendered = {
        name: render(_wrap(tmp_path / name, DEPLOY / "overlays" / name, parts[name]))
        for name in ("cpu", "gpu")
    }
    kinds = {o["kind"] for objects in rendered.values() for o in objects}
    assert {"Deployment", "NetworkPolicy", "Job", "HorizontalPodAutoscaler"} <= kinds
    assert {"GRPCRoute", "PodMonitor", "Ingress"} <= kinds
    summary = run_checkov(rendered, tmp_path)
    assert summary["failed"] == [] and summary["passed"] > 200, summary


def test_overlays_dcam_build_deploy_writes_pass(onnx_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    trt = _with_report(onnx_repo, tmp_path / "trt", target="trt")
    cases = {
        "cpu-object": (onnx_repo, [*BUCKET, "--autoscaling", "keda", "--entry", "gateway"]),
        "cpu-volume": (onnx_repo, [*VOLUME, "--tls", "--monitoring"]),
        "gpu-object": (trt, [*BUCKET, "--autoscaling", "hpa", "--entry", "ingress-nginx"]),
        "gpu-volume": (trt, [*VOLUME, "--tls", "--monitoring"]),
    }
    rendered = {}
    for name, (repo, options) in cases.items():
        out = tmp_path / name
        args = ["deploy", str(repo), "--out", str(out), "--namespace", "line", *options]
        result = CliRunner().invoke(build_group, args)
        assert result.exit_code == 0, result.output
        rendered[name] = render(str(out))
        if (out / "inferenceservice.yaml").exists():  # the KServe alternative: its rules
            isvc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
            assert kserve_problems(isvc) == [], name
    summary = run_checkov(rendered, tmp_path)
    assert summary["failed"] == [] and summary["passed"] > 200, summary
    # The custom resources of these overlays against their CRDs' schemas too.
    custom = [o for objects in rendered.values() for o in objects if not is_core(o)]
    assert {o["kind"] for o in custom} >= {"ScaledObject", "GRPCRoute", "PodMonitor"}
    code, results = validate(custom)
    assert code == 0 and all(r["status"] == "valid" for r in results), results
