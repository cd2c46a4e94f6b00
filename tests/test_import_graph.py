"""The import graph between the stage folders, read from the code with `ast`: no cycles, the
client without torch or the training side, and core below every stage.

Every `dcam.<stage>` import counts, at module level and inside functions (deferred imports are
still dependencies).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = (
    "core",
    "datasets",
    "nets",
    "teacher",
    "training",
    "build",
    "model_repository",
    "serve",
    "client",
)


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name `path` imports, `from X import Y` as X and as X.Y."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports(stage: str) -> set[str]:
    return {m for path in (ROOT / stage).rglob("*.py") for m in _imported_modules(path)}


def _stage_graph() -> dict[str, set[str]]:
    """stage -> the other stages it imports (`dcam.<stage>` or `dcam.<stage>.…`)."""
    graph = {}
    for stage in STAGES:
        parts = (m.split(".") for m in _imports(stage))
        graph[stage] = {p[1] for p in parts if len(p) > 1 and p[0] == "dcam"} - {stage}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search over the stages)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for stage in sorted(graph):
        cycle = visit(stage, [])
        if cycle:
            return cycle
    return None


def test_every_stage_folder_holds_python() -> None:
    for stage in STAGES:
        assert any((ROOT / stage).rglob("*.py")), stage


def test_stage_imports_form_no_cycle() -> None:
    graph = _stage_graph()
    assert set().union(*graph.values()) <= set(STAGES), "a dcam package this test does not know"
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle between stages: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_one() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_teacher_does_not_import_training() -> None:
    assert "training" not in _stage_graph()["teacher"]


def test_client_imports_neither_torch_nor_the_training_side() -> None:
    imports = _imports("client")
    assert not {m for m in imports if m.split(".")[0] in ("torch", "torchvision")}
    assert not _stage_graph()["client"] & {"training", "build", "teacher", "nets"}


def test_core_imports_no_other_stage() -> None:
    assert _stage_graph()["core"] == set()


def test_build_takes_versions_from_core_not_the_training_manifest() -> None:
    assert "dcam.training.manifest" not in _imports("build")
