"""The package layering holds: no jaxdml package imports a private name of another, and the packages' imports
form no cycle (module-level and function-level imports alike)."""

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"jaxdml": REPO / "jaxdml", "jaxdml.kernels": REPO / "kernels"}


def _modules():
    for prefix, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((prefix, *parts)), path


def _package(module: str) -> str:
    """The unit of layering: ``jaxdml.<sub>`` (a sub-package, or a root module such as ``jaxdml.config``)."""
    return ".".join(module.split(".")[:2])


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_no_package_imports_a_private_name_of_another():
    offences = []
    for module, path in _modules():
        for target, names in _imports(path):
            if not target.startswith("jaxdml") or _package(target) == _package(module):
                continue
            private = [n for n in names if n.startswith("_")] + [p for p in target.split(".") if p.startswith("_")]
            if private:
                offences.append(f"{module} imports {private} from {target}")
    assert not offences, offences


def test_packages_import_each_other_without_cycles():
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in _modules():
        source = _package(module)
        for target, _ in _imports(path):
            if target.startswith("jaxdml") and _package(target) != source:
                graph[source].add(_package(target))
    # Each root module (config, cli, main, errors) is a node of its own.
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
