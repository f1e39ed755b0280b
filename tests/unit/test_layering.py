"""The import graph follows the layers of docs/architecture.md §1 and has no cycle at all.

"At all" means every import statement counts for cycles: module level, inside functions (a
deferred import hides a cycle from the interpreter, not from the design) and under
``if TYPE_CHECKING:`` (an annotation-only back edge still makes two modules read each other).
"""

from __future__ import annotations

import ast
from pathlib import Path

import garagekv

ROOT = Path(garagekv.__file__).parent

# Each layer may import only layers with a lower or equal rank.
RANKS = {
    "util": 0,
    "db": 1,
    "net": 2,
    "rpc": 3,
    "table": 4,
    "consensus": 4,
    "model": 5,
    "api": 6,
    "client": 1,
    "admin": 7,
    "server": 8,
    "supervisor": 8,
    "bench": 8,
    "cli": 9,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Imports under ``if TYPE_CHECKING:`` exist only for type checkers, never at run time."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` names, with relative imports resolved against ``path``."""
    if node.level == 0:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, type_checking: bool = False) -> set[str]:
    """garagekv modules ``path`` imports anywhere in its body (``type_checking``: those too)."""
    tree = ast.parse(path.read_text())
    skip = set() if type_checking else _type_checking_nodes(tree)
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            module = _absolute(path, node)
            if module.startswith("garagekv"):
                out.add(module)
                for alias in node.names:
                    out.add(f"{module}.{alias.name}")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("garagekv"))
    return out


def graph(type_checking: bool = False) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    g = {}
    for name, path in modules.items():
        g[name] = {m for m in imports_of(path, type_checking) if m in modules and m != name}
    return g


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "server"


def test_no_upward_imports():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if RANKS[layer(dep)] > RANKS[layer(mod)]:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def import_cycles(g: dict[str, set[str]]) -> list[str]:
    """One cycle per back edge of a depth-first walk (empty iff the graph is acyclic)."""
    # Package __init__ modules re-export their children; a child importing its package's
    # __init__ is not a design cycle, so package -> own child edges are ignored.
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in edges.get(m, ()):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles():
    cycles = import_cycles(graph(type_checking=True))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_cycle_check_sees_every_kind_of_import(tmp_path):
    """The checker itself: deferred, annotation-only and relative imports all make edges."""
    pkg = tmp_path / "garagekv" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("def f():\n    from garagekv.pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n")
    (pkg / "c.py").write_text("from .a import f\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "garagekv"
    try:
        g = graph(type_checking=True)
        assert g["garagekv.pkg.a"] == {"garagekv.pkg.b"}
        assert g["garagekv.pkg.b"] == {"garagekv.pkg.c"}
        assert g["garagekv.pkg.c"] == {"garagekv.pkg.a"}
        assert len(import_cycles(g)) == 1
        assert not import_cycles(graph())  # without annotation-only imports the ring is open
    finally:
        ROOT = saved


def test_layout_package_reads_one_way():
    """Texts on top, data below: nothing in rpc/layout imports describe, which imports history."""
    g = graph(type_checking=True)
    inside = [m for m in g if m.startswith("garagekv.rpc.layout.")]
    assert not [m for m in inside if "garagekv.rpc.layout.describe" in g[m]]
    assert "garagekv.rpc.layout.history" in g["garagekv.rpc.layout.describe"]
