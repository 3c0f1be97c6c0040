"""Figures of the code's shape: module count, largest module, imports inside functions, import cycles.

    .venv/bin/python benchmarks/module_stats.py            # this checkout's src/
    .venv/bin/python benchmarks/module_stats.py --src DIR  # another tree's src/ (e.g. an exported commit)

An import cycle is a group of modules that import each other, directly or through others (a
strongly connected component of the import graph, imports inside functions included, imports
only for type checking left out: they never run).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import grimp

PACKAGE = "otel_meter"


def python_modules(package_dir: Path) -> list[Path]:
    return sorted(path for path in package_dir.rglob("*.py") if "__pycache__" not in path.parts)


def function_level_imports(path: Path) -> int:
    """Import statements whose nearest enclosing scope is a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    count = 0

    def visit(node: ast.AST, in_function: bool) -> None:
        nonlocal count
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                count += 1
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return count


def import_edges(src_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules it imports (at run time, inside functions too)."""
    sys.path.insert(0, str(src_dir))
    graph = grimp.build_graph(PACKAGE, exclude_type_checking_imports=True, cache_dir=None)
    return {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}


def top_level(module: str) -> str:
    """``otel_meter.exporters.clickhouse.exporter`` -> ``otel_meter.exporters``."""
    return ".".join(module.split(".")[:2])


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = lowlink[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in edges.get(module, ()):
            if imported not in index:
                connect(imported)
                lowlink[module] = min(lowlink[module], lowlink[imported])
            elif imported in on_stack:
                lowlink[module] = min(lowlink[module], index[imported])
        if lowlink[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for module in sorted(edges):
        if module not in index:
            connect(module)
    return components


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                        help="the src/ directory holding the otel_meter package")
    src_dir = parser.parse_args().src.resolve()
    modules = python_modules(src_dir / PACKAGE)
    lines = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in modules}
    largest = max(lines, key=lambda path: lines[path])
    edges = import_edges(src_dir)
    cycles = import_cycles(edges)
    packages: dict[str, set[str]] = {}
    for module, imported in edges.items():
        packages.setdefault(top_level(module), set()).update(
            top_level(target) for target in imported if top_level(target) != top_level(module))
    package_cycles = import_cycles(packages)
    print(f"modules: {len(modules)}")
    print(f"largest module: {largest.relative_to(src_dir)} ({lines[largest]} lines)")
    print(f"function-level imports: {sum(function_level_imports(path) for path in modules)}")
    print(f"import cycles: {len(cycles)}")
    for cycle in cycles:
        print(f"  {len(cycle)} modules: {', '.join(cycle)}")
    print(f"import cycles between top-level packages and modules: {len(package_cycles)}")
    for cycle in package_cycles:
        print(f"  {', '.join(cycle)}")


if __name__ == "__main__":
    main()
