"""The package's import graph has no cycles between subpackages.

A cycle between two subpackages means neither can be understood, tested or
moved without the other; a run-directory module below `train/` and
`sampling/` (issue 19) exists to keep them apart. The graph is read with
`ast`, so nothing is imported, and function-level (lazy) imports count too:
a lazy import is still a dependency.
"""

import ast
from pathlib import Path

PACKAGE = "upgpt_jax"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _node(module: str) -> str:
    """The graph node of a dotted module name: `upgpt_jax.X` for anything in `upgpt_jax/X*`."""
    return ".".join(module.split(".")[:2])


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module of this package that `tree` imports, at any depth (lazy imports included)."""
    found = set()
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from upgpt_jax import train` imports the subpackage `train`.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def import_graph() -> dict[str, set[str]]:
    """Node -> the other nodes it imports, over every module under `upgpt_jax/`."""
    known = {_node(_module_name(path)) for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {node: set() for node in known}
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for target in _imported(tree, module, path.name == "__init__.py"):
            edge = _node(target)
            if edge in known and edge != _node(module):
                graph[_node(module)].add(edge)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a closed path of nodes, or None when it is acyclic."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_closed_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "upgpt_jax.models" in graph["upgpt_jax.train"]
    assert all(node.startswith(PACKAGE) for node in graph)


def test_no_import_cycles_between_subpackages():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_run_directory_and_weight_files_sit_below_their_users():
    graph = import_graph()
    users = {f"{PACKAGE}.{name}" for name in ("train", "sampling", "eval", "convert", "app")}
    assert not graph[f"{PACKAGE}.rundir"] & users
    assert not graph[f"{PACKAGE}.weights"] & (users | {f"{PACKAGE}.models", f"{PACKAGE}.rundir"})
