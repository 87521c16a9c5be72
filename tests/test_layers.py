"""The house rules of DESIGN.md ("Layers"), read from the code itself: which room may import which,
no import circle, imports at module top, and the size limits (files, functions, folders).

The rules are checked on the source text (``ast``), so nothing is imported or run. An import inside
a function is allowed only to defer a heavy or optional dependency, and must say so on its line
with a ``# deferred:`` comment.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("retrieval_pretrain", "decoders", "caption", "vcap_toolkit")

# Rooms from the ground up, and the rooms each may import (besides itself). A module belongs to the
# longest room name that prefixes it.
ALLOWED: dict[str, set[str]] = {
    "retrieval_pretrain.foundation": set(),
    "retrieval_pretrain.reading": {"retrieval_pretrain.foundation"},
    "retrieval_pretrain.modeling": {"retrieval_pretrain.foundation"},
    "retrieval_pretrain.stage1": {"retrieval_pretrain.foundation", "retrieval_pretrain.reading",
                                  "retrieval_pretrain.modeling"},
    "retrieval_pretrain": set(),  # the package's own __init__: a docstring
    "decoders": set(),
    "caption": {"retrieval_pretrain.foundation", "retrieval_pretrain.reading", "retrieval_pretrain.modeling",
                "retrieval_pretrain.stage1", "decoders"},
    "vcap_toolkit.jobs": {"retrieval_pretrain.foundation", "retrieval_pretrain.reading",
                          "retrieval_pretrain.modeling", "retrieval_pretrain.stage1"},
    "vcap_toolkit.reports": {"retrieval_pretrain.foundation", "retrieval_pretrain.reading", "caption"},
    "vcap_toolkit.web": {"retrieval_pretrain.foundation", "retrieval_pretrain.reading", "retrieval_pretrain.modeling",
                         "retrieval_pretrain.stage1", "caption", "decoders", "vcap_toolkit.jobs",
                         "vcap_toolkit.reports"},
    "vcap_toolkit.cli": {"retrieval_pretrain.foundation", "retrieval_pretrain.reading", "retrieval_pretrain.modeling",
                         "retrieval_pretrain.stage1", "caption", "decoders", "vcap_toolkit.jobs",
                         "vcap_toolkit.reports", "vcap_toolkit.web"},
    "vcap_toolkit": set(),
}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_MODULES_PER_FOLDER = 15


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def room(module: str) -> str:
    """The room (``ALLOWED`` key) a module belongs to."""
    return max((r for r in ALLOWED if module == r or module.startswith(r + ".")), key=len)


def _target(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The toolkit modules an import statement names (a ``from pkg import mod`` names ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return [n for n in names if n.split(".")[0] in PACKAGES]


def imports(module: str) -> tuple[dict[str, int], list[tuple[int, str, str]]]:
    """``({imported module: line}, [(line, imported, source line) of imports inside functions]``."""
    path = MODULES[module]
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    top: dict[str, int] = {}
    inner: list[tuple[int, str, str]] = []
    module_level = {id(n) for n in tree.body}
    for block in tree.body:  # imports guarded by a module-level if/try are still module-level
        if isinstance(block, (ast.If, ast.Try)):
            module_level |= {id(n) for n in ast.walk(block) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = _target(module, node)
        if id(node) in module_level:
            for t in targets:
                top.setdefault(t, node.lineno)
        else:
            inner.append((node.lineno, ", ".join(targets) or ast.unparse(node), lines[node.lineno - 1]))
    return top, inner


GRAPH = {m: imports(m)[0] for m in MODULES}


def test_every_module_has_a_room():
    homeless = [m for m in MODULES if not any(m == r or m.startswith(r + ".") for r in ALLOWED)]
    assert not homeless


def test_no_import_runs_against_the_layers():
    bad = []
    for module, targets in GRAPH.items():
        mine = room(module)
        for target, line in targets.items():
            theirs = room(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {mine} may not import {theirs} ({target})")
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    # Tarjan's strongly connected components over module -> module arrows (package faces included).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, {}):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
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
                circles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_imports_sit_at_module_top_unless_deferred_with_a_reason():
    bad = []
    for module in MODULES:
        for line, what, source in imports(module)[1]:
            if "# deferred:" not in source:
                bad.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {source.strip()}")
    assert not bad, "imports inside functions without a '# deferred: why' comment:\n" + "\n".join(bad)


def test_no_file_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, long


def test_no_function_over_the_limit():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_no_folder_with_too_many_modules():
    per_folder: dict[Path, int] = defaultdict(int)
    for path in MODULES.values():
        if path.name != "__init__.py":
            per_folder[path.parent.relative_to(ROOT)] += 1
    crowded = {str(k): v for k, v in per_folder.items() if v > MAX_MODULES_PER_FOLDER}
    assert not crowded, crowded


@pytest.mark.parametrize("module", ["retrieval_pretrain.foundation.errors", "vcap_toolkit.cli.main"])
def test_the_checker_sees_real_arrows(module):
    # A guard on the guard: the foundation imports nothing of the toolkit; the command line imports
    # every layer below it (so an empty graph would not pass the rules above unnoticed).
    targets = {room(t) for t in GRAPH[module]}
    if module.endswith("errors"):
        assert targets == set()
    else:
        assert {"caption", "vcap_toolkit.cli"} <= targets | {"vcap_toolkit.cli"} and len(GRAPH[module]) >= 3
