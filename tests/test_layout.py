"""The package layout (STYLE.md conventions 1, 12 and 15): no module imports another module's
private names, no import cycles (function-level imports included), no package imports a higher
one in the declared order, no file over ~450 lines. Static scans of the source, so they run in
milliseconds; the exceptions below are listed with their reason and the test fails for any new one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import saelens_lite

ROOT = Path(saelens_lite.__file__).parent
MAX_LINES = 450
# Files over MAX_LINES not split yet, with the reason (remove an entry when its file is split).
TOO_LONG: dict[str, str] = {}


# Packages in data-flow order: a module may import its own package and lower ones, never a higher
# one (saelens_lite/__init__.py and __main__.py, above them all, are not in a package).
PACKAGE_ORDER = ("util", "corpus", "lm", "cache", "kernels", "saes", "training", "features", "evals",
                 "interventions", "circuits", "explain", "dashboards", "compare", "cli")
# Upward imports not removed yet, (importer, imported module) -> the reason (remove when fixed).
UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def runtime_imports(tree: ast.AST):
    """Import nodes outside ``if TYPE_CHECKING:`` blocks (function-level ones included)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported(mod: str, node) -> list[tuple[str, str | None, str | None]]:
    """(module, name taken from it or None, local alias) for each saelens_lite import of a node."""
    if isinstance(node, ast.Import):
        return [(a.name, None, a.asname or a.name.split(".")[0]) for a in node.names
                if a.name.split(".")[0] == "saelens_lite"]
    base = node.module or ""
    if node.level:  # relative import
        pkg = mod.split(".") if MODULES[mod].name == "__init__.py" else mod.split(".")[:-1]
        base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "saelens_lite":
        return []
    return [(f"{base}.{a.name}", None, a.asname or a.name) if f"{base}.{a.name}" in MODULES
            else (base, a.name, a.asname or a.name) for a in node.names]


def private_uses(mod: str, tree: ast.AST) -> list[str]:
    """``from saelens_lite.x import _name`` and ``x._name`` on an imported saelens_lite module."""
    found, modules = [], {}
    for node in runtime_imports(tree):
        for target, name, alias in imported(mod, node):
            if name is not None and name.startswith("_") and not name.startswith("__"):
                found.append(f"{mod}:{node.lineno} imports {target}.{name}")
            elif name is None:
                modules[alias] = target
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{mod}:{node.lineno} uses {modules[node.value.id]}.{node.attr}")
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for mod, path in MODULES.items():
        deps = {t for node in runtime_imports(ast.parse(path.read_text()))
                for t, _, _ in imported(mod, node)}
        # importing saelens_lite.a.b runs package saelens_lite.a first: an edge to it, unless the
        # importer is inside that package (then the package is already being imported)
        inside = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}
        deps |= {".".join(d.split(".")[:i]) for d in deps for i in range(2, d.count(".") + 1)} - inside
        graph[mod] = {d for d in deps if d in MODULES and d != mod}
    return graph


def package_of(mod: str) -> str | None:
    """The package a module belongs to (``saelens_lite.lm.hooks`` -> ``lm``), None at top level."""
    parts = mod.split(".")
    if len(parts) > 2 or (len(parts) == 2 and mod in MODULES and MODULES[mod].name == "__init__.py"):
        return parts[1]
    return None


def upward_imports(graph: dict[str, set[str]], order: tuple[str, ...] = PACKAGE_ORDER) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module's package comes after the importer's."""
    rank = {p: i for i, p in enumerate(order)}
    found = []
    for mod, deps in sorted(graph.items()):
        here = package_of(mod)
        for dep in sorted(deps):
            there = package_of(dep)
            if here is not None and there is not None and rank[there] > rank[here]:
                found.append((mod, dep))
    return found


def direct_imports() -> dict[str, set[str]]:
    """Module -> the saelens_lite modules it imports by name (runtime imports, as above)."""
    return {mod: {t for node in runtime_imports(ast.parse(path.read_text())) for t, _, _ in imported(mod, node)}
            for mod, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_another_modules_private_names():
    found = [u for mod, p in MODULES.items() for u in private_uses(mod, ast.parse(p.read_text()))]
    assert found == [], "promote what is shared to a public name:\n" + "\n".join(found)


def test_no_import_cycles_even_inside_functions():
    assert cycles(import_graph()) == []


def test_the_cycle_scan_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_every_package_has_its_place_in_the_order():
    packages = {package_of(m) for m in MODULES} - {None}
    assert packages == set(PACKAGE_ORDER), f"place these in PACKAGE_ORDER: {packages ^ set(PACKAGE_ORDER)}"


def test_no_package_imports_a_higher_one_even_inside_functions():
    found = upward_imports(direct_imports())
    new = [f"{a} imports {b}" for a, b in found if (a, b) not in UPWARD]
    assert new == [], ("move what the lower package needs down (or the code up):\n" + "\n".join(new))
    assert set(UPWARD) <= set(found), f"listed upward imports that are gone: {set(UPWARD) - set(found)}"


def test_the_order_scan_finds_an_upward_import():
    graph = {"saelens_lite.lm.hooks": {"saelens_lite.cache.reader", "saelens_lite.util.atomic"},
             "saelens_lite.cache.reader": {"saelens_lite.lm.hooks"}, "saelens_lite.util.atomic": set()}
    assert upward_imports(graph) == [("saelens_lite.lm.hooks", "saelens_lite.cache.reader")]


def test_no_file_over_450_lines_but_the_listed_ones():
    lines = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    new = {f: n for f, n in lines.items() if n > MAX_LINES and f not in TOO_LONG}
    assert new == {}, f"split these (or list them in TOO_LONG with a reason): {new}"
    assert set(TOO_LONG) <= set(lines), f"listed files that no longer exist: {set(TOO_LONG) - set(lines)}"


@pytest.mark.slow  # a fresh interpreter per order
@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_every_module_imports_in_a_fresh_interpreter(order):
    """Each module imports in a fresh interpreter, packages first or submodules first."""
    mods = [m for m in sorted(MODULES) if not m.startswith("saelens_lite.kernels.triton") and m != "saelens_lite.__main__"]
    mods = mods[::-1] if order == "reversed" else mods
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)"
    proc = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
