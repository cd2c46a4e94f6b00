"""What the distribution promises: the client and serve extras each install alone, without
torch, and do their job against the real server (the serve-only environment is also what
Triton's plain -py3 container is: no torch); the README renders as intended and matches."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import distribution
from pathlib import Path

import pytest
import tomllib
from click import Group
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


@contextlib.contextmanager
def _serving(bin_dir: Path, repo: Path) -> Iterator[str]:
    """`dcam-serve REPO` from bin_dir while the block runs (its gRPC URL); it then stops on
    SIGTERM with exit status 0."""
    proc, url = _serve(bin_dir, repo)
    try:
        first = proc.stdout.readline()
        while first.startswith("freed "):  # it cleaned up after a server killed without a stop
            first = proc.stdout.readline()
        assert "serving" in first
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


@pytest.mark.slow
@pytest.mark.triton
def test_serve_extra_alone_serves_the_cpu_repository(serve_bin: Path, ensemble_repo: Path) -> None:
    """No torch anywhere in the server's environment: the CPU repository still serves."""
    with _serving(serve_bin, ensemble_repo) as url:
        images = parity_images(64)["generated"]
        _, scores, decided = infer("grpc", url, images)
        assert scores.shape == (len(images), 1) and decided.dtype == bool


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
    with _serving(serve_bin, repo) as url:
        raw = grpcclient.InferInput("raw_score", [3, 1], "FP32")
        raw.set_data_from_numpy(np.array([[0.0], [0.5], [50.0]], np.float32))
        result = grpcclient.InferenceServerClient(url).infer("calibrate", [raw])
        decided = result.as_numpy("is_anomalous")
        assert decided.dtype == bool and decided[-1, 0] and result.as_numpy("score").shape == (3, 1)


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


# The Markdown a reader sees: the README and docs/ render and match the code; the other READMEs'
# links resolve too.
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINKED = [*DOCS, ROOT / "deploy" / "README.md", ROOT / "benchmarks" / "README.md"]
FENCE_KINDS = {"bash", "text", "mermaid", ""}


def _tokens(path: Path = README) -> list:
    return MarkdownIt("commonmark").enable("table").parse(path.read_text())


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _code(path: Path) -> list[str]:
    """The code a page shows: its fences and its inline code spans."""
    code = []
    for token in _tokens(path):
        if token.type == "fence":
            code.append(token.content)
        for child in token.children or ():
            if child.type == "code_inline":
                code.append(child.content)
    return code


def test_docs_exist_and_the_readme_is_short() -> None:
    assert len(DOCS) >= 7, [_name(p) for p in DOCS]
    lines = README.read_text().splitlines()
    assert len(lines) <= 170, f"the README has {len(lines)} lines; move detail to docs/"
    first_command = next(i for i, line in enumerate(lines) if line.startswith("make "))
    assert first_command < 20, f"the README's first command is on line {first_command + 1}"


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_readme_code_fences_hold_only_code(path: Path) -> None:
    """A fence closed with text on the same line opens a new fence that swallows what follows."""
    fences = [t for t in _tokens(path) if t.type == "fence"]
    if path == README:
        assert fences, "the README has no code blocks"
    for fence in fences:
        assert fence.info.strip() in FENCE_KINDS, f"{_name(path)}: {fence.info}"
        assert not re.search(r"^#+ |^\| ", fence.content, re.M), fence.content[:200]


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_readme_headings_and_tables_render(path: Path) -> None:
    tokens = _tokens(path)
    source = path.read_text().splitlines()
    where = _name(path)
    fenced = {i for t in tokens if t.type == "fence" for i in range(*t.map)}
    headings = {t.map[0] for t in tokens if t.type == "heading_open"}
    for i, line in enumerate(source):
        if line.startswith("#") and i not in fenced:
            assert i in headings, f"{where}:{i + 1} does not render as a heading: {line}"
    tables = [t for t in tokens if t.type == "table_open"]
    table_lines = {i for t in tables for i in range(*t.map)}
    for i, line in enumerate(source):
        if line.startswith("|") and i not in fenced:
            assert i in table_lines, f"{where}:{i + 1} does not render as a table: {line}"


@pytest.mark.parametrize("path", LINKED, ids=_name)
def test_docs_links_resolve(path: Path) -> None:
    """Every relative link and image names a file or folder in the repository (anchors aside)."""
    targets = []
    for token in _tokens(path):
        for child in token.children or ():
            if child.type == "link_open":
                targets.append(child.attrs["href"])
            elif child.type == "image":
                targets.append(child.attrs["src"])
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor on the same page
        file = (path.parent / target.split("#")[0]).resolve()
        assert file.exists(), f"{_name(path)} links to missing {target}"
        assert ROOT in file.parents, f"{_name(path)} links outside the repository: {target}"


def test_docs_commands_exist() -> None:
    """Every `.venv/bin/<tool>` and `dcam-*` command shown is a console script (its subcommand
    one the group has), and every `make <target>` shown is a Makefile target."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    commands = {e.name: e for e in distribution("dcam").entry_points if e.name in scripts}
    venv_tools = {"python", "pip", "ruff", "pytest"}
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
    shown_tools, shown_targets = set(), set()
    for path in DOCS:
        for code in _code(path):
            for tool in re.findall(r"\.venv/bin/([\w.-]+)", code):
                assert tool in scripts or tool in venv_tools, f"{_name(path)}: .venv/bin/{tool}"
            # A command is dcam-<word> and its arguments (`dcam-api-key` is a header; a name
            # after a slash, e.g. dns:///dcam-triton-pods, is a host).
            for tool, sub in re.findall(r"(?<![\w./-])(dcam-[a-z]+)(?: +([a-z][\w-]*))?", code):
                if tool not in scripts and " " not in code.strip():
                    continue
                assert tool in scripts, f"{_name(path)} shows {tool}, not a console script"
                group = commands[tool].load()
                if isinstance(group, Group) and sub:
                    assert sub in group.commands, f"{_name(path)}: {tool} has no {sub}"
                shown_tools.add(tool)
            for target in re.findall(r"(?<![\w-])make ([a-z][\w-]*)", code):
                assert target in targets, f"{_name(path)} shows make {target}: not in the Makefile"
                shown_targets.add(target)
    assert shown_tools == set(scripts), set(scripts) - shown_tools
    assert {"demo", "test", "check"} <= shown_targets


def test_readme_matches_the_code() -> None:
    text = README.read_text()
    scripts = [e.name for e in distribution("dcam").entry_points if e.group == "console_scripts"]
    assert len(scripts) >= 6
    for script in scripts:
        assert script in text, f"README never mentions {script}"
    docs = "\n".join(p.read_text() for p in DOCS)
    counts = {int(n) for n in re.findall(r"(\d+) synthetic categories", docs)}
    assert counts == {len(CATEGORIES)}, counts
    for folder in ("core", "datasets", "teacher", "training", "build", "serve", "client"):
        assert f"`{folder}/`" in text, f"the README's layout lacks {folder}/"
    # What the build copies beside each Python model is named by build/repository.py, not
    # counted here: a count would go stale when a module is added.
    assert "build/repository.py" in text
    assert not re.search(r"copies (two|three|four|five) (files|modules)", docs), "a stale count"
