"""The shape of the code: layers import one way, no cycles, small modules and functions.

These are the rules of docs/architecture.md, checked on the source itself (parsed with
:mod:`ast`, nothing imported), so a change that breaks the layering fails CI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "galdecon"

#: What each layer may import of galdecon (besides itself). ``errors`` and ``version``
#: are the foundations every layer shares.
BASE = {"errors", "version"}
ALLOWED = {
    "errors": set(),
    "version": set(),
    "core": {"errors"},
    "data": BASE,
    "engines": {"core"} | BASE,
    "science": {"core", "data"} | BASE,
    "run": {"core", "engines", "data", "science"} | BASE,
    "bench": {"core", "engines", "data", "science", "run"} | BASE,
    "cli": {"core", "engines", "data", "science", "run", "bench"} | BASE,
}
#: Modules outside the layers: the package's public face and old import paths.
FACADES = {"galdecon", "galdecon.__main__", "galdecon.chunked"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = ("galdecon", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in module ``name``."""
    out = []
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("galdecon")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("galdecon"):
                continue
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            out += [(m, [], node.lineno) for m in submodules]
            rest = [n for n in names if f"{base}.{n}" not in MODULES]
            if rest:
                out.append((base, rest, node.lineno))
    return out


def layer(name: str) -> str:
    return name.split(".")[1] if name.count(".") else name


def test_every_module_is_in_a_layer():
    unknown = [m for m in MODULES if m not in FACADES and layer(m) not in ALLOWED]
    assert unknown == []


def test_layers_import_one_way():
    wrong = []
    for name in MODULES:
        if name in FACADES:
            continue
        own = layer(name)
        for target, _, line in imports(name):
            theirs = layer(target)
            if theirs != own and theirs not in ALLOWED[own]:
                wrong.append(f"{name}:{line} imports {target}")
    assert wrong == []


def test_no_import_cycles():
    # Lazy (function-level) imports count too: a cycle hidden in a function is still one.
    graph = {m: {t for t, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_private_name_is_imported_from_another_module():
    taken = [f"{name}:{line} takes {n} from {target}"
             for name in MODULES for target, names, line in imports(name)
             for n in names if n.startswith("_") and not n.startswith("__") and target != name]
    assert taken == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines"



def _body_lines(node) -> int:
    """Lines of a function without its docstring (documentation is not the length to limit)."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
            and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_functions_fit_on_one_screen():
    long = [f"{name}.{node.name}: {_body_lines(node)} lines"
            for name, tree in TREES.items() for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and _body_lines(node) > MAX_FUNCTION_LINES]
    assert long == []


def test_tests_mirror_the_package_tree():
    tests = Path(__file__).resolve().parent
    layers = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert layers <= folders
    assert folders <= layers
