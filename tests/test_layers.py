"""The packages' layers, read from the source (ast), imports inside functions included.

    vip5/                     the top: command line, demo, local stack, benches; may import anything
    streams/   model_worker/     streams may use index/; model_worker may use index/
    index/                    retrieval: encoders, FAISS index, candidate sources, SASRec
    runtime/                  Kafka clients, tailing, item features, metrics, logs, CLI helpers
    schemas/                  the records

`index/` imports neither `model_worker/` nor `streams/`; `streams/` and `model_worker/` may use
`index/` but not each other; no package imports `vip5/`; no cycle between packages or between files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "runtime", "index", "streams", "model_worker", "vip5")

# package -> the project packages it may import (itself always allowed)
ALLOWED = {
    "schemas": set(),
    "runtime": {"schemas"},
    "index": {"schemas", "runtime"},
    "model_worker": {"schemas", "runtime", "index"},
    "streams": {"schemas", "runtime", "index"},
    "vip5": {"schemas", "runtime", "index", "streams", "model_worker"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports (a `from package import submodule` counts as the submodule)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES:
                found.add(target)
    found.discard(name)
    return found


MODULES = source_files()
GRAPH = {name: imports_of(name, path, MODULES) for name, path in MODULES.items()}


def package(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_each_package_imports_only_the_layers_below_it(pkg):
    wrong = sorted(f"{m} imports {t}" for m, targets in GRAPH.items() if package(m) == pkg
                   for t in targets if package(t) != pkg and package(t) not in ALLOWED[pkg])
    assert not wrong, "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_files():
    # a package's __init__ re-exporting its submodules is not a cycle of ideas; skip those edges
    graph = {m: {t for t in targets if not (MODULES[m].name == "__init__.py" and t.startswith(m + "."))}
             for m, targets in GRAPH.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {pkg: set() for pkg in PACKAGES}
    for module, targets in GRAPH.items():
        graph[package(module)].update(package(t) for t in targets if package(t) != package(module))
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_layer_reader_sees_imports_inside_functions():
    # guards the test itself: trainer.py imports vip5model inside a function
    assert "schemas.records" in GRAPH["runtime.features"]
    assert any(t.startswith("model_worker.vip5model") for t in GRAPH["model_worker.trainer"])
