"""The import graph follows the layers of docs/architecture.md §1 and has no cycle at all."""

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


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("garagekv"):
                out.add(node.module)
                for alias in node.names:
                    out.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("garagekv"))
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    g = {}
    for name, path in modules.items():
        g[name] = {m for m in imports_of(path) if m in modules and m != name}
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


def test_no_import_cycles():
    g = graph()
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
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
