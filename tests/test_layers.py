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

from benchmarks.import_graph import circles, find_modules, graph, read_imports

ROOT = Path(__file__).resolve().parents[1]

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
                         "vcap_toolkit.reports", "vcap_toolkit.web", "vcap_toolkit"},
    "vcap_toolkit": set(),  # the package's own __init__: the OpenMP wait policy, before torch loads
}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_MODULES_PER_FOLDER = 15

MODULES = find_modules(ROOT)
RECORDS = {m: read_imports(m, MODULES) for m in MODULES}
GRAPH = {m: r.top for m, r in RECORDS.items()}


def room(module: str) -> str:
    """The room (``ALLOWED`` key) a module belongs to."""
    return max((r for r in ALLOWED if module == r or module.startswith(r + ".")), key=len)


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
    # Imports inside functions count: a circle hidden in a function body is still a circle.
    assert not circles(graph(MODULES, inner=True))


def test_imports_sit_at_module_top_unless_deferred_with_a_reason():
    bad = []
    for module in MODULES:
        for line, what, source in RECORDS[module].inner:
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


def test_the_checker_sees_real_arrows():
    # A guard on the guard: the foundation's errors import nothing of the toolkit, while the command
    # line's room reaches every layer below it (so an empty graph cannot pass the rules unnoticed).
    assert GRAPH["retrieval_pretrain.foundation.errors"] == {}
    reached = {room(t) for m in MODULES if room(m) == "vcap_toolkit.cli"
               for t in graph(MODULES, inner=True)[m]}
    assert {"caption", "retrieval_pretrain.stage1", "vcap_toolkit.jobs", "vcap_toolkit.web"} <= reached
