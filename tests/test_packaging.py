"""What the distribution promises: the client and serve extras each install alone, without
torch, and do their job against the real server (the serve-only environment is also what
Triton's plain -py3 container is: no torch); the README renders as intended and matches."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from dcam.build.parity import parity_images
from dcam.build.verify import infer
from dcam.datasets.synthetic import CATEGORIES
from dcam.serve.server import ServerConfig, TritonServer, free_port

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
NOT_SOURCE = (".git", ".venv", "runs", "data", "__pycache__", "*.egg-info", ".*_cache", "*.onnx")


def install_extra(work: Path, extra: str) -> Path:
    """A fresh virtualenv with dcam[extra] alone; returns its bin/ (asserting it has no torch)."""
    # Install from a copy: setuptools builds in-tree, into build/lib, and build/ is our source.
    source = work / "source"
    if not source.exists():
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    venv = work / f"{extra}-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    install = [str(bin_dir / "pip"), "install", "--quiet", f"{source}[{extra}]"]
    subprocess.run(install, check=True, timeout=900, capture_output=True)
    no_torch = subprocess.run([str(bin_dir / "python"), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, f"the {extra} extra pulled in torch"
    return bin_dir


@pytest.fixture(scope="module")
def serve_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_extra(tmp_path_factory.mktemp("serve-only"), "serve")


def _serve(bin_dir: Path, repo: Path) -> tuple[subprocess.Popen, str]:
    """`dcam-serve REPO` from bin_dir on free ports; returns the process and its gRPC URL."""
    ports = [str(free_port()) for _ in range(3)]
    cmd = [str(bin_dir / "dcam-serve"), str(repo), "--ready-timeout", "90"]
    cmd += ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, f"127.0.0.1:{ports[1]}"


@pytest.mark.slow
@pytest.mark.triton
def test_serve_extra_alone_serves_the_cpu_repository(serve_bin: Path, ensemble_repo: Path) -> None:
    """No torch anywhere in the server's environment: the CPU repository still serves."""
    proc, url = _serve(serve_bin, ensemble_repo)
    try:
        assert "serving" in proc.stdout.readline()
        images = parity_images(64)["generated"]
        _, scores, decided = infer("grpc", url, images)
        assert scores.shape == (len(images), 1) and decided.dtype == bool
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


@pytest.mark.slow
@pytest.mark.triton
def test_gpu_inputs_without_torch_fail_the_load_saying_why(
    serve_bin: Path, gpu_input_repo: Path
) -> None:
    """GPU-input post-processing imports torch in initialize: a container without it fails at
    load with the reason, not on the first request."""
    proc, _ = _serve(serve_bin, gpu_input_repo)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert "needs PyTorch" in output and "torch-postprocess.Dockerfile" in output


@pytest.mark.slow
@pytest.mark.triton
def test_gpu_builds_python_step_serves_without_torch(
    serve_bin: Path, trt_pod_repo: Path, tmp_path: Path
) -> None:
    """The fused GPU build's only Python model (calibrate: raw score -> score, decision) loads
    and answers where torch is absent, as in the stock -py3 image; the plans need a GPU."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    repo = tmp_path / "python-steps"
    shutil.copytree(trt_pod_repo / "calibrate", repo / "calibrate")
    proc, url = _serve(serve_bin, repo)
    try:
        assert "serving" in proc.stdout.readline()
        raw = grpcclient.InferInput("raw_score", [3, 1], "FP32")
        raw.set_data_from_numpy(np.array([[0.0], [0.5], [50.0]], np.float32))
        result = grpcclient.InferenceServerClient(url).infer("calibrate", [raw])
        decided = result.as_numpy("is_anomalous")
        assert decided.dtype == bool and decided[-1, 0] and result.as_numpy("score").shape == (3, 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


@pytest.mark.slow
@pytest.mark.triton
def test_client_extra_alone_scores_without_torch(
    tmp_path: Path, ensemble_repo: Path, synthetic_root: Path
) -> None:
    bin_dir = install_extra(tmp_path, "client")
    help_text = subprocess.run(
        [str(bin_dir / "dcam-client"), "score", "--help"], capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "--threshold" in help_text.stdout
    images = synthetic_root / "carpet" / "test"
    out = tmp_path / "scores.jsonl"
    with TritonServer(ServerConfig(ensemble_repo)) as server:
        scored = subprocess.run(
            [
                str(bin_dir / "dcam-client"),
                "score",
                "--dir",
                str(images),
                "--recursive",
                "--url",
                server.grpc_url,
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert scored.returncode == 0, scored.stdout + scored.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(list(images.rglob("*.png")))
    assert all(r["error"] is None and isinstance(r["score"], float) for r in rows)
    auroc = subprocess.run(
        [str(bin_dir / "dcam-client"), "auroc", str(out)], capture_output=True, text=True
    )
    assert auroc.returncode == 0 and "image AUROC" in auroc.stdout, auroc.stderr


def _tokens() -> list:
    return MarkdownIt("commonmark").enable("table").parse(README.read_text())


def test_readme_code_fences_hold_only_code() -> None:
    """A fence closed with text on the same line opens a new fence that swallows what follows."""
    fences = [t for t in _tokens() if t.type == "fence"]
    assert fences, "the README has no code blocks"
    for fence in fences:
        assert fence.info.strip() in {"bash", "text", ""}, fence.info
        assert not re.search(r"^#+ |^\| ", fence.content, re.M), fence.content[:200]


def test_readme_headings_and_tables_render() -> None:
    tokens = _tokens()
    source = README.read_text().splitlines()
    fenced = {i for t in tokens if t.type == "fence" for i in range(*t.map)}
    headings = {t.map[0] for t in tokens if t.type == "heading_open"}
    for i, line in enumerate(source):
        if line.startswith("#") and i not in fenced:
            assert i in headings, f"line {i + 1} does not render as a heading: {line}"
    tables = [t for t in tokens if t.type == "table_open"]
    table_lines = {i for t in tables for i in range(*t.map)}
    for i, line in enumerate(source):
        if line.startswith("|") and i not in fenced:
            assert i in table_lines, f"line {i + 1} does not render as a table: {line}"


def test_readme_matches_the_code() -> None:
    text = README.read_text()
    for link in re.findall(r"\]\(([^)#:]+)\)", text):
        assert (ROOT / link).exists(), f"README links to missing {link}"
    scripts = [e.name for e in distribution("dcam").entry_points if e.group == "console_scripts"]
    assert len(scripts) >= 6
    for script in scripts:
        assert script in text, f"README never mentions {script}"
    counts = {int(n) for n in re.findall(r"(\d+) synthetic categories", text)}
    assert counts == {len(CATEGORIES)}, counts
    for folder in ("core", "datasets", "teacher", "training", "build", "serve", "client"):
        assert f"`{folder}/`" in text, f"the README's layout lacks {folder}/"
