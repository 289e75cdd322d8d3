"""The import graph, read from the source with `ast` (nothing is imported): the core library
never imports the serving or command-line layers, no modules import each other in a circle,
and the serving package never reaches torch.

Modules are named as installed: pyproject's package-dir maps serving/ to vidt.serving and cli/
to vidt.cli. An edge A -> B means A's source imports B (`from B import name` counts as B.name
when that is a module), whether at import time or later, inside a function: a lazy import
makes an import cheaper, not a dependency go away. Imports under `if TYPE_CHECKING:` never
run and count only for the layering rule. Importing a submodule's parent packages is not
counted, as Python runs those first whatever the order.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
LAYERS_ABOVE_CORE = ("vidt.serving", "vidt.cli")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    at_import: set[str] = field(default_factory=set)  # run when the module is imported
    later: set[str] = field(default_factory=set)  # run inside functions, when called
    type_only: set[str] = field(default_factory=set)  # under TYPE_CHECKING: never run

    @property
    def runs(self) -> set[str]:
        return self.at_import | self.later


def package_roots() -> dict[str, Path]:
    """Top-level package name -> its folder: `vidt` and the package-dir entries."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"vidt": ROOT / "vidt"}
    roots.update({name: ROOT / d for name, d in tool.get("package-dir", {}).items()})
    return roots


def find_modules() -> dict[str, Module]:
    roots = package_roots()
    found = {}
    for pkg, folder in roots.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("").parts
            # A folder mapped elsewhere (none today) belongs to its own package, not this one.
            if any(folder / Path(*rel[:i]) in roots.values() for i in range(1, len(rel))):
                continue
            is_package = rel[-1] == "__init__"
            name = ".".join((pkg, *rel[:-1]) if is_package else (pkg, *rel))
            found[name] = Module(name, path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(node: ast.AST, mod: Module, known: dict[str, Module]) -> set[str]:
    """Module names an import statement (or importlib.import_module("...") call) names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if isinstance(node, ast.ImportFrom):
        if node.level:
            package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module
        return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                for a in node.names}
    if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
            == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return {node.args[0].value}
    return set()


def _walk(node: ast.AST, mod: Module, known: dict[str, Module], into: str) -> None:
    getattr(mod, into).update(_imported(node, mod, known))
    for child in ast.iter_child_nodes(node):
        where = into
        if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
            where = "type_only"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            where = "type_only" if into == "type_only" else "later"
        _walk(child, mod, known, where)


@pytest.fixture(scope="module")
def graph() -> dict[str, Module]:
    known = find_modules()
    for mod in known.values():
        _walk(ast.parse(mod.path.read_text(), str(mod.path)), mod, known, "at_import")
    return known


def _under(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _core(mod: Module) -> bool:
    return mod.path.is_relative_to(ROOT / "vidt")


def test_the_graph_sees_every_layer(graph):
    # A reader that found nothing would pass every test below.
    assert {"vidt.policy_file", "vidt.serving.runtime", "vidt.cli.main",
            "vidt.export.export"} <= set(graph)
    assert "vidt.policy_file" in graph["vidt.serving.runtime"].at_import
    assert "vidt.train.checkpoint" in graph["vidt.export.export"].later  # in a function
    assert "vidt.train.checkpoint" not in graph["vidt.export.export"].at_import


def test_the_core_library_never_imports_serving_or_the_cli(graph):
    # vidt/ is a library the serving and command-line layers build on, never the reverse:
    # not inside a function, not for a type annotation.
    bad = sorted(f"{m.name} imports {name}" for m in graph.values() if _core(m)
                 for name in m.runs | m.type_only if _under(name, LAYERS_ABOVE_CORE))
    assert not bad, "\n".join(bad)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a self-import
    (Tarjan's algorithm; a recursive one, as the graph is a few dozen modules deep at most)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle(graph):
    # Lazy imports count: two modules that need each other are one module split in two,
    # whichever of them defers its import.
    edges = {m.name: {n for n in m.runs if n in graph} for m in graph.values()}
    circles = _cycles(edges)
    assert not circles, "modules importing each other in a circle: " + "; ".join(
        " <-> ".join(c) for c in circles)


def test_the_serving_package_never_reaches_torch(graph):
    # Following every import that runs, in functions too, from each serving module through
    # the vidt modules it reaches: a server or robot installs no torch. (test_runtime checks
    # the same at runtime for `import vidt.serving` and OnnxPolicy.)
    for start in sorted(n for n in graph if _under(n, ["vidt.serving"])):
        seen, todo, via = {start}, [start], {start: None}
        while todo:
            name = todo.pop()
            for dep in sorted(graph[name].runs):
                target = next((m for m in (dep, dep.rpartition(".")[0]) if m in graph), None)
                if _under(dep, ["torch"]):
                    path, step = [dep], name
                    while step:
                        path.append(step)
                        step = via[step]
                    pytest.fail(f"{start} reaches torch: {' <- '.join(path)}")
                if target and target not in seen:
                    seen.add(target)
                    via[target] = name
                    todo.append(target)
