"""The house's import rules, checked from the source (no module is imported): `make lint` runs it.

    python .ci/import_check.py        # exit 1 and one line per broken rule

1. No circular imports between the product's modules, counting imports inside functions too (a
   lazy import hides a circle from Python, not from the reader).
2. The one-way rules of docs/architecture.md:
   - `shardio` (the shard format) imports neither `etl`, `model`, `workflows` nor the CLI;
   - `etl` never imports `model`, `workflows`, the CLI, torch or click;
   - `model` never imports `etl`, `workflows`, the CLI or click;
   - `workflows` never imports the CLI or click;
   - nothing of the product imports `benchmarks` or `tests` (or their modules by bare name).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shardio", "etl", "model", "workflows")
TOP_MODULES = ("cli", "cli_support")
CLI = ("cli", "cli_support")
#: package -> names (first component of an import) it must never import
FORBIDDEN = {
    "shardio": ("etl", "model", "workflows", *CLI, "torch", "click"),
    "etl": ("model", "workflows", *CLI, "torch", "click"),
    "model": ("etl", "workflows", *CLI, "click"),
    "workflows": (*CLI, "click"),
}
NEVER = ("benchmarks", "tests", "conftest")


def product_modules() -> dict[str, Path]:
    """Module name -> file of every module of the product."""
    out = {name: ROOT / f"{name}.py" for name in TOP_MODULES}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Every module name `path` imports, at any depth of the file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the product modules it imports (a submodule import counts for the package too)."""
    edges = {}
    for name, path in modules.items():
        targets = set()
        for imp in imports_of(name, path):
            while imp and imp not in modules:
                imp = imp.rpartition(".")[0]
            if imp and imp != name and not name.startswith(imp + "."):  # a package's own parent
                targets.add(imp)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def problems() -> list[str]:
    modules = product_modules()
    edges = graph(modules)
    lines = [f"circular import: {' <-> '.join(c)}" for c in cycles(edges)]
    # scripts and test helpers by bare name (put on the import path by hand): benchmarks/x.py is `x`
    scripts = {p.stem for d in NEVER for p in (ROOT / d).glob("*.py")} - set(modules)
    for name, path in modules.items():
        top = name.split(".")[0]
        banned = (*FORBIDDEN.get(top, ()), *NEVER)
        rel = path.relative_to(ROOT)
        for first in sorted({imp.split(".")[0] for imp in imports_of(name, path)}):
            if first in banned and first != top:
                lines.append(f"{rel}: imports {first} ({top} must not import {first})")
            elif first in scripts:
                lines.append(f"{rel}: imports {first} (a script of benchmarks/ or tests/)")
    return sorted(set(lines))


def main() -> int:
    found = problems()
    for line in found:
        print(line, file=sys.stderr)
    n = len(product_modules())
    print(f"import check: {n} modules, {len(found)} problem(s)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
