"""What the distribution promises: the client extra installs alone, without torch, and scores
through a real server; the README renders as intended and matches the code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from dcam.datasets.synthetic import CATEGORIES
from dcam.serve.server import ServerConfig, TritonServer

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
NOT_SOURCE = (".git", ".venv", "runs", "data", "__pycache__", "*.egg-info", ".*_cache", "*.onnx")


@pytest.mark.slow
@pytest.mark.triton
def test_client_extra_alone_scores_without_torch(
    tmp_path: Path, ensemble_repo: Path, synthetic_root: Path
) -> None:
    # Install from a copy: setuptools builds in-tree, into build/lib, and build/ is our source.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    venv = tmp_path / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    install = [str(bin_dir / "pip"), "install", "--quiet", f"{source}[client]"]
    subprocess.run(install, check=True, timeout=900, capture_output=True)
    no_torch = subprocess.run([str(bin_dir / "python"), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, "the client extra pulled in torch"
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
