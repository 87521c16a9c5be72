"""The toolkit's import graph, read from the source (``ast``; nothing is imported or run): modules
per folder, arrows (module -> module imports, at module top and inside functions), floors (a module
stands one floor above the highest module it imports) and circles (modules that import each other
in a loop). ``tests/test_layers.py`` checks DESIGN.md's rules on the same reading.

    python -m benchmarks.import_graph                 # this checkout
    python -m benchmarks.import_graph --root OTHER    # another checkout (e.g. a worktree of an older commit)
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("retrieval_pretrain", "decoders", "caption", "vcap_toolkit")


@dataclass
class ImportRecord:
    """One module's imports of toolkit modules: at module top (``top``: module -> first line) and
    inside functions (``inner``: (line, target modules, the source line))."""

    top: dict[str, int] = field(default_factory=dict)
    inner: list[tuple[int, str, str]] = field(default_factory=list)


def find_modules(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of the toolkit's packages under ``root``."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _targets(module: str, modules: dict[str, Path], node: ast.Import | ast.ImportFrom) -> list[str]:
    """The toolkit modules an import statement names (``from pkg import mod`` names ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if modules[module].name == "__init__.py" else module.split(".")[:-1]
            base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return [n for n in names if n.split(".")[0] in PACKAGES]


def read_imports(module: str, modules: dict[str, Path]) -> ImportRecord:
    """What ``module`` imports of the toolkit (a module-level ``if``/``try`` counts as the top)."""
    text = modules[module].read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    at_top = {id(n) for n in tree.body}
    for block in tree.body:
        if isinstance(block, (ast.If, ast.Try)):
            at_top |= {id(n) for n in ast.walk(block) if isinstance(n, (ast.Import, ast.ImportFrom))}
    record = ImportRecord()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = _targets(module, modules, node)
        if id(node) in at_top:
            for t in targets:
                record.top.setdefault(t, node.lineno)
        else:
            record.inner.append((node.lineno, ", ".join(targets) or ast.unparse(node), lines[node.lineno - 1]))
    return record


def graph(modules: dict[str, Path], inner: bool = True) -> dict[str, set[str]]:
    """``{module: modules it imports}`` (with ``inner``, imports inside functions too)."""
    out = {}
    for m in modules:
        r = read_imports(m, modules)
        targets = set(r.top)
        if inner:
            targets |= {t.strip() for _, ts, _ in r.inner for t in ts.split(",") if t.strip() in modules}
        out[m] = {t for t in targets if t in modules and t != m}
    return out


def circles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in arrows.get(v, ()):
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
                found.append(sorted(comp))

    for v in arrows:
        if v not in index:
            visit(v)
    return found


def floors(arrows: dict[str, set[str]]) -> dict[str, int]:
    """Floor of each module: 1 + the highest floor it imports (1 for none); a circle shares one floor."""
    comp_of = {m: i for i, comp in enumerate(circles(arrows)) for m in comp}
    memo: dict[str, int] = {}

    def floor(m: str, seen: frozenset[str]) -> int:
        if m in memo:
            return memo[m]
        below = [floor(t, seen | {m}) for t in arrows[m]
                 if t not in seen and not (m in comp_of and comp_of.get(t) == comp_of[m])]
        memo[m] = 1 + max(below, default=0)
        return memo[m]

    return {m: floor(m, frozenset()) for m in arrows}


def summary(root: Path) -> dict[str, object]:
    """Modules per folder, arrows, floors and circles of the checkout at ``root``."""
    modules = find_modules(root)
    arrows = graph(modules)
    per_folder = Counter(str(p.parent.relative_to(root)) for p in modules.values() if p.name != "__init__.py")
    inner = sum(len(read_imports(m, modules).inner) for m in modules)
    return {"modules": len(modules), "per_folder": dict(sorted(per_folder.items())),
            "arrows": sum(len(t) for t in arrows.values()), "floors": max(floors(arrows).values()),
            "circles": circles(arrows), "imports_inside_functions": inner}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    s = summary(parser.parse_args(argv).root)
    print(f"modules {s['modules']}, arrows {s['arrows']}, floors {s['floors']}, circles {len(s['circles'])}, "
          f"imports inside functions {s['imports_inside_functions']}")
    for folder, n in s["per_folder"].items():
        print(f"  {folder:34s} {n:3d} modules")
    for c in s["circles"]:
        print("  circle:", " -> ".join(c))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
