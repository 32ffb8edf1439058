"""Imports run one way: no import cycle among the package's modules, late (function-level) imports
included, and no module imports a layer above its own (data -> llm -> features -> model -> config ->
trainer -> quick_start -> experiments)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("recbole_histllm", "dataset_converters")

#: Layers, lowest first: a module may import its own layer or lower ones. The longest matching prefix
#: names a module's layer; a module matching none is an experiment (top layer).
LAYERS = {
    "dataset_converters": 0, "recbole_histllm.compat": 0, "recbole_histllm.utils": 0,
    "recbole_histllm.evaluator": 0, "recbole_histllm.distributed": 0, "recbole_histllm.split": 0,
    "recbole_histllm.llm": 1,
    "recbole_histllm.features": 2,
    "recbole_histllm.model": 3,
    "recbole_histllm.config": 4, "recbole_histllm.config_schema": 4,
    "recbole_histllm.trainer": 5,
    "recbole_histllm.quick_start": 6,
}
TOP = 7


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Package modules ``name`` imports anywhere in its file (module level and inside functions); a
    module's own parent packages are not counted (Python imports them first anyway)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate:
                targets.add(candidate)
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return targets - ancestors - {name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def layer(name: str) -> int:
    matches = [prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else TOP


def test_the_graph_sees_late_imports():
    edges = graph()
    assert "recbole_histllm.llm.backbone" in edges["recbole_histllm.config_schema"]  # imported inside a function
    assert "dataset_converters.ml100k" in edges["recbole_histllm.quick_start"]


def test_no_import_cycle():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_imports_go_one_way():
    upward = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                    for a, targets in graph().items() for b in targets if layer(b) > layer(a))
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"a"}}, ["a", "a"]),
])
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert find_cycle(edges) == expected
