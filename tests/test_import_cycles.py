"""No import circle between the project's modules (issue 11).

A circle is what function-local imports hide: two modules that can only be loaded in one order,
and a layer that cannot be understood (or replaced) without the one above it. The test reads the
sources with ``ast`` (nothing is imported), builds the graph of imports between project modules --
module-level and function-local alike, except those under ``if TYPE_CHECKING:``, which never run --
and fails naming every circle it finds, edge by edge with the line that makes it.

An import of a package is an edge to its ``__init__``; ``from package import name`` is an edge to
the submodule ``package.name`` when there is one, and to the package's ``__init__`` in any case.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGES = ("aimaster", "common_io")

Edges = Dict[str, Dict[str, int]]  # module -> {imported module: line of the first import}


def project_modules() -> Dict[str, Path]:
    """Every module of the project packages, by dotted name (a package under its own name)."""
    modules: Dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((SRC / package).rglob("*.py")):
            parts = list(path.relative_to(SRC).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST) -> Iterator[ast.stmt]:
    """Every import statement under ``node``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _imports(child)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _owner(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The project module that importing ``name`` loads (a function name resolves to its module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: Dict[str, Path]) -> Edges:
    edges: Edges = {name: {} for name in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _absolute(node, module, path.name == "__init__.py")
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != module:
                    edges[module].setdefault(owner, node.lineno)
    return edges


def circles(edges: Edges) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    for root in edges:
        if root in index:
            continue
        work: List[Tuple[str, Iterator[str]]] = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(edges[succ])))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def one_loop(edges: Edges, component: List[str]) -> List[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start, members = component[0], set(component)
    parents: Dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in edges[node]:
                if succ not in members:
                    continue
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, node, start]
                if succ not in parents:
                    parents[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def describe(edges: Edges, modules: Dict[str, Path], component: List[str]) -> str:
    loop = one_loop(edges, component)
    steps = [f"  {a} -> {b}  ({modules[a].relative_to(SRC.parent)}:{edges[a][b]})" for a, b in zip(loop, loop[1:])]
    return f"{len(component)} modules: {', '.join(component)}\n" + "\n".join(steps)


def test_the_walker_sees_local_imports_and_ignores_type_checking(tmp_path):
    """The walker itself: a function-local import is an edge, one under TYPE_CHECKING is not."""
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b\n"
                 "def f():\n    from pkg import c\n")
    modules = {"pkg": tmp_path / "__init__.py", "pkg.a": a, "pkg.b": tmp_path / "b.py", "pkg.c": tmp_path / "c.py"}
    for path in (modules["pkg"], modules["pkg.b"], modules["pkg.c"]):
        path.write_text("")
    modules["pkg.c"].write_text("from . import a\n")
    edges = import_graph(modules)
    assert set(edges["pkg.a"]) == {"pkg", "pkg.c"}
    assert edges["pkg.c"] == {"pkg": 1, "pkg.a": 1}
    assert circles(edges) == [["pkg.a", "pkg.c"]]
    assert one_loop(edges, ["pkg.a", "pkg.c"]) == ["pkg.a", "pkg.c", "pkg.a"]


def test_no_import_circle_in_the_project():
    modules = project_modules()
    assert "aimaster.inference.table" in modules and "common_io.table" in modules
    edges = import_graph(modules)
    found = circles(edges)
    assert not found, "import circles (break them; a function-local import only hides one):\n" + "\n".join(
        describe(edges, modules, component) for component in found)
