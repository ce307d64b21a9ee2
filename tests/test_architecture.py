"""Architecture checks on the ``supervisor`` package, read with ``ast`` (nothing is imported):

* no import cycle between modules;
* imports run one way, from outer layers to inner ones (``LAYERS``), never the other way, lazily or not;
* every module belongs to a layer;
* no module is over ``MAX_LINES`` physical lines;
* what ``protocol.py``, ``control/client.py`` and ``cli/main.py`` load when imported is standard library only
  (the CLI's start-up cost; ``qasup status`` is a health check).

The walker counts every import statement of a module wherever it is (inside functions, under
``if TYPE_CHECKING:``), resolves relative forms, and names each one by ``file:line`` in failures.
"""

from __future__ import annotations

import ast
import functools
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "supervisor"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 400

# Innermost first. An entry names a module and everything below it, except the bare package name, which
# names only supervisor/__init__.py.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("supervisor", "supervisor.errors", "supervisor.protocol", "supervisor.lazyssl", "supervisor.records")),
    ("config", ("supervisor.config",)),
    ("plan", ("supervisor.plan",)),
    ("proc/logs/readiness", ("supervisor.proc", "supervisor.logs", "supervisor.readiness")),
    ("engine", ("supervisor.engine",)),
    ("control", ("supervisor.control",)),
    ("daemon", ("supervisor.daemon",)),
    ("cli", ("supervisor.cli", "supervisor.__main__")),
)

# Modules whose import-time closure must be standard library only (supervisor modules it passes through
# are followed); the first may not import any supervisor module at top level at all.
STDLIB_ONLY = ("supervisor.protocol", "supervisor.control.client", "supervisor.cli.main")
NO_INTERNAL_IMPORTS = ("supervisor.protocol",)

# Whether imports under ``if TYPE_CHECKING:`` count for the cycle check. They never run, but they are a
# dependency all the same (for readers and for mypy), and the issue asks for no cycles at all. (They always
# count for the layer check: an inner layer does not even name an outer one.)
CYCLES_COUNT_TYPE_CHECKING_IMPORTS = True


# ------------------------------------------------------------------------------------------ the walker

@dataclass(frozen=True)
class Import:
    """One imported module as one statement names it."""

    source: str        # the importing module, e.g. "supervisor.config.loader"
    target: str        # the module imported, e.g. "supervisor.logs.core" or "anyio.lowlevel"
    file: str          # the importing file, relative to the repository
    line: int
    statement: str     # the statement, on one line
    top_level: bool    # runs when the module is imported: not in a function, not under TYPE_CHECKING
    where: str         # "", "in a function" or "under TYPE_CHECKING"
    internal: bool     # the target is the package or one of its modules

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.statement}" + (f"  ({self.where})" if self.where else "")


def package_modules(pkg_dir: Path, pkg_name: str) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = [pkg_name, *path.relative_to(pkg_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Walker(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str], file: str) -> None:
        self.module = module
        self.root = module.partition(".")[0]
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.file = file
        self.where: list[str] = []
        self.found: list[Import] = []

    def _add(self, node: ast.AST, target: str) -> None:
        text = ast.unparse(node)   # (ast.get_source_segment re-splits the whole file on every call)
        where = self.where[-1] if self.where else ""
        internal = target == self.root or target.startswith(self.root + ".")
        self.found.append(Import(self.module, target, self.file, getattr(node, "lineno", 0),
                                 text, not self.where, where, internal))

    def _nested(self, nodes: list[ast.stmt], where: str) -> None:
        self.where.append(where)
        for n in nodes:
            self.visit(n)
        self.where.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.where.append("in a function")
        self.generic_visit(node)
        self.where.pop()

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._nested(node.body, "under TYPE_CHECKING")
            for n in node.orelse:
                self.visit(n)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            if node.level > 1:
                parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in self.known else base for a in node.names]
        for target in dict.fromkeys(targets):   # `from pkg import submodule` or a name in pkg; each once
            self._add(node, target)

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("x") / __import__("x") with a literal name
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if (name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
            self._add(node, node.args[0].value)
        self.generic_visit(node)


def imports_of(module: str, path: Path, known: set[str], repo: Path) -> list[Import]:
    """Every import in one module's file, in the order written."""
    source = path.read_text(encoding="utf-8")
    w = _Walker(module, path.name == "__init__.py", known, str(path.relative_to(repo)))
    w.visit(ast.parse(source, str(path)))
    return w.found


@functools.cache
def walk(pkg_dir: Path = PACKAGE_DIR, pkg_name: str = PACKAGE) -> tuple[dict[str, Path], tuple[Import, ...]]:
    """The package's modules and every import they make."""
    mods = package_modules(pkg_dir, pkg_name)
    known = set(mods)
    found: list[Import] = []
    for name, path in mods.items():
        found += imports_of(name, path, known, pkg_dir.parent)
    return mods, tuple(found)


def internal_edges(mods: dict[str, Path], imports: tuple[Import, ...]) -> dict[tuple[str, str], Import]:
    """(importer, imported) -> the first statement making that import, between modules of the package."""
    edges: dict[tuple[str, str], Import] = {}
    for imp in imports:
        if (imp.internal and imp.target in mods and imp.target != imp.source
                and (CYCLES_COUNT_TYPE_CHECKING_IMPORTS or imp.where != "under TYPE_CHECKING")):
            edges.setdefault((imp.source, imp.target), imp)
    return edges


# ------------------------------------------------------------------------------------------ analyses

def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None   # (length of the matching entry, layer)
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            hit = module == entry or (entry != PACKAGE and module.startswith(entry + "."))
            if hit and (best is None or len(entry) > best[0]):
                best = (len(entry), index)
    return None if best is None else best[1]


def layer_name(index: int) -> str:
    return f"layer {index} ({LAYERS[index][0]})"


def cycles(nodes: list[str], edges: dict[tuple[str, str], Import]) -> list[list[str]]:
    """Import cycles as [a, b, ..., a]: in each strongly connected component, the shortest cycle through
    each of its modules (each cycle once, starting at its smallest name)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in sorted(edges):
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:   # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for n in sorted(nodes):
        if n not in index:
            strongconnect(n)
    found: list[list[str]] = []
    for comp in sorted(components):
        members = set(comp)
        for start in comp:   # the shortest cycle through each member, each cycle once
            cycle = _shortest_cycle(start, members, succ)
            i = cycle.index(min(cycle))
            cycle = cycle[i:-1] + cycle[:i + 1]   # rotated to start at its smallest name
            if cycle not in found:
                found.append(cycle)
    return found


def _shortest_cycle(start: str, members: set[str], succ: dict[str, list[str]]) -> list[str]:
    prev: dict[str, str] = {}
    frontier = [start]
    while start not in prev:   # breadth first, back to start (it is in a strongly connected component)
        nxt = []
        for v in frontier:
            for w in succ[v]:
                if w in members and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    path = [start]
    v = prev[start]
    while v != start:
        path.append(v)
        v = prev[v]
    path.append(start)
    return path[::-1]


def describe_cycle(path: list[str], edges: dict[tuple[str, str], Import]) -> str:
    lines = [" -> ".join(m.removeprefix(PACKAGE + ".") for m in path)]
    lines += [f"    {edges[a, b]}" for a, b in itertools.pairwise(path)]
    return "\n".join(lines)


def layer_violations(mods: dict[str, Path], imports: tuple[Import, ...]) -> list[str]:
    bad = []
    for imp in imports:
        if not imp.internal:
            continue
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is not None and dst is not None and dst > src:
            bad.append(f"{imp}\n    {imp.source} ({layer_name(src)}) imports {imp.target} ({layer_name(dst)})")
    return bad


def physical_lines(path: Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _parents(module: str) -> list[str]:
    """The packages that run before a module does: supervisor, supervisor.cli, ... (outermost first)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_time_problems(root: str, mods: dict[str, Path], imports: tuple[Import, ...]) -> list[str]:
    """Non-standard-library modules that importing ``root`` loads, each with the chain of imports to it."""
    top: dict[str, list[Import]] = {}
    for imp in imports:
        if imp.top_level:
            top.setdefault(imp.source, []).append(imp)
    chain: dict[str, tuple[Import, ...]] = {root: ()}
    queue = [root]
    for p in _parents(root):
        chain.setdefault(p, ())
        queue.append(p)
    bad = []
    while queue:
        mod = queue.pop(0)
        for imp in top.get(mod, []):
            here = (*chain[mod], imp)
            if imp.internal:
                for m in (*_parents(imp.target), imp.target):
                    if m in mods and m not in chain:
                        chain[m] = here
                        queue.append(m)
            elif imp.target.partition(".")[0] not in sys.stdlib_module_names:
                bad.append("\n    -> ".join(str(i) for i in here))
    return bad


# ------------------------------------------------------------------------------------------ the checks



def test_no_import_cycles():
    mods, imports = walk()
    edges = internal_edges(mods, imports)
    found = cycles(list(mods), edges)
    assert not found, "import cycles in the supervisor package:\n" + "\n".join(
        describe_cycle(c, edges) for c in found)


def test_inner_layers_do_not_import_outer_ones():
    mods, imports = walk()
    bad = layer_violations(mods, imports)
    order = " <- ".join(name for name, _ in LAYERS)
    assert not bad, f"imports against the layering ({order}):\n" + "\n".join(bad)


def test_every_module_has_a_layer():
    mods, _ = walk()
    lost = sorted(m for m in mods if layer_of(m) is None)
    assert not lost, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {', '.join(lost)}"


def test_no_module_over_the_line_limit():
    mods, _ = walk()
    sizes = sorted(((physical_lines(p), p) for p in mods.values()), reverse=True)
    over = [f"    {p.relative_to(PACKAGE_DIR.parent)}: {n} lines" for n, p in sizes if n > MAX_LINES]
    assert not over, f"modules over {MAX_LINES} lines:\n" + "\n".join(over)


@pytest.mark.parametrize("module", STDLIB_ONLY)
def test_cli_side_modules_load_only_the_standard_library(module):
    mods, imports = walk()
    assert module in mods, f"{module} is gone: update STDLIB_ONLY in {Path(__file__).name}"
    bad = import_time_problems(module, mods, imports)
    assert not bad, f"importing {module} loads more than the standard library:\n" + "\n".join(bad)
    if module in NO_INTERNAL_IMPORTS:
        internal = [str(i) for i in imports if i.source == module and i.top_level and i.internal]
        assert not internal, f"{module} must import no supervisor module at top level:\n" + "\n".join(internal)


# ------------------------------------------------------------------------------------------ the walker itself

def test_walker_reads_every_import_form(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("import os\n")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\nfrom .leaf import thing\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from __future__ import annotations\n"
        "import pkg.base\n"
        "from .. import base\n"
        "from ..base import name\n"
        "from pkg import sub\n"
        "TYPE_CHECKING = False\n"
        "if TYPE_CHECKING:\n"
        "    import anyio\n"
        "else:\n"
        "    import json\n"
        "class C:\n"
        "    import re\n"
        "def f():\n"
        "    from pkg.sub import (\n"
        "        other_name,\n"
        "    )\n"
        "    import importlib\n"
        "    importlib.import_module('pkg.base')\n")
    mods, imports = walk(pkg, "pkg")
    assert set(mods) == {"pkg", "pkg.base", "pkg.sub", "pkg.sub.leaf"}
    got = [(i.source, i.target, i.line, i.top_level, i.where) for i in imports if i.source == "pkg.sub.leaf"]
    assert got == [
        ("pkg.sub.leaf", "__future__", 1, True, ""),
        ("pkg.sub.leaf", "pkg.base", 2, True, ""),
        ("pkg.sub.leaf", "pkg.base", 3, True, ""),
        ("pkg.sub.leaf", "pkg.base", 4, True, ""),
        ("pkg.sub.leaf", "pkg.sub", 5, True, ""),
        ("pkg.sub.leaf", "anyio", 8, False, "under TYPE_CHECKING"),
        ("pkg.sub.leaf", "json", 10, True, ""),
        ("pkg.sub.leaf", "re", 12, True, ""),
        ("pkg.sub.leaf", "pkg.sub", 14, False, "in a function"),
        ("pkg.sub.leaf", "importlib", 17, False, "in a function"),
        ("pkg.sub.leaf", "pkg.base", 18, False, "in a function"),
    ]
    assert [(i.target, i.line) for i in imports if i.source == "pkg.sub"] == [("pkg.sub.leaf", 1), ("pkg.sub.leaf", 2)]
    assert str(imports[-1]) == "pkg/sub/leaf.py:18: importlib.import_module('pkg.base')  (in a function)"
    assert next(str(i) for i in imports if i.line == 14) == "pkg/sub/leaf.py:14: from pkg.sub import other_name  (in a function)"
    edges = internal_edges(mods, imports)
    assert cycles(list(mods), edges) == [["pkg.sub", "pkg.sub.leaf", "pkg.sub"]]


def test_cycles_and_layers_on_a_small_graph():
    edges = {(a, b): Import(a, b, "f.py", 1, f"import {b}", True, "", True)
             for a, b in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d")]}
    assert cycles(list("abcde"), edges) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert layer_of("supervisor") == 0 and layer_of("supervisor.protocol") == 0
    assert layer_of("supervisor.config.loader") == 1 and layer_of("supervisor.logs") == 3
    assert layer_of("supervisor.daemon") == 6 and layer_of("supervisor.__main__") == 7
    assert layer_of("supervisor.newthing") is None and layer_of("supervisor.daemonic") is None


def test_walker_sees_the_real_tree():
    mods, imports = walk()
    assert {"supervisor", "supervisor.protocol", "supervisor.daemon", "supervisor.cli.main"} <= set(mods)
    assert ("supervisor.__main__", "supervisor.cli.main") in internal_edges(mods, imports)


def test_import_time_closure_follows_packages_and_skips_lazy_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "heavy").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "heavy" / "__init__.py").write_text("import anyio\n")   # runs before any module of pkg.heavy
    (pkg / "heavy" / "light.py").write_text("import json\n")
    (pkg / "main.py").write_text("import os\nfrom pkg.heavy import light\ndef f():\n    import httpx\n")
    (pkg / "lazy.py").write_text("TYPE_CHECKING = False\nif TYPE_CHECKING:\n    import httpx\n"
                                 "def f():\n    from pkg.heavy import light\n")
    mods, imports = walk(pkg, "pkg")
    assert import_time_problems("pkg.main", mods, imports) == [
        "pkg/main.py:2: from pkg.heavy import light\n    -> pkg/heavy/__init__.py:1: import anyio"]
    assert import_time_problems("pkg.lazy", mods, imports) == []
