"""The figures of innera's architecture, read from the code: modules, lines per layer, import
cycles (imports inside functions included), imports running up a layer, and reaches into
third-party private names outside ``innera/compat/``.

    .venv/bin/python scripts/architecture_stats.py

The layers are the ones ``[tool.importlinter]`` in ``pyproject.toml`` states; a module that
none of them names is counted under "other".
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
# this checkout's packages, whichever checkout the venv was installed from
sys.path.insert(0, str(ROOT))
PACKAGES = ("innera", "workers")
OURS = {*PACKAGES, "tests", "bench", "scripts"}


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    for contract in config["contracts"]:
        if contract["type"] == "layers":
            return [[m.strip() for m in layer.replace(":", "|").split("|")]
                    for layer in contract["layers"]]
    raise SystemExit("no layers contract in pyproject.toml")


def _layer_of(module: str, layers: list[list[str]]) -> int | None:
    for index, layer in enumerate(layers):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return index
    return None


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _private_reaches(path: Path) -> list[str]:
    """Third-party private names a file imports or reaches through an imported name."""
    tree = ast.parse(path.read_text(), str(path))
    third_party: set[str] = set()
    reaches: list[str] = []

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root not in OURS and root not in sys.stdlib_module_names:
                    third_party.add((alias.asname or alias.name).split(".")[0])
                    if any(private(part) for part in alias.name.split(".")):
                        reaches.append(f"{path.relative_to(ROOT)}:{node.lineno} {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root in OURS or root in sys.stdlib_module_names:
                continue
            for alias in node.names:
                third_party.add(alias.asname or alias.name)
                if any(private(p) for p in node.module.split(".")) or private(alias.name):
                    reaches.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in third_party:
                reaches.append(f"{path.relative_to(ROOT)}:{node.lineno} {base.id}...{node.attr}")
    return reaches


def main() -> None:
    layers = _layers()
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    lines: dict[str, int] = defaultdict(int)
    modules = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules += 1
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            dotted = dotted.removesuffix(".__init__")
            layer = _layer_of(dotted, layers)
            key = "other" if layer is None else " | ".join(layers[layer])
            lines[key] += len(path.read_text().splitlines())
    print(f"modules: {modules}")
    print("lines per layer (top first):")
    for layer in [*(" | ".join(layer) for layer in layers), "other"]:
        if lines.get(layer):
            print(f"  {lines[layer]:6d}  {layer}")
    cycles = _cycles(graph)
    print(f"cycles: {len(cycles)}")
    for cycle in cycles:
        print("  " + " <-> ".join(cycle))
    upward = []
    for importer in sorted(graph.modules):
        low = _layer_of(importer, layers)
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            high = _layer_of(imported, layers)
            if low is not None and high is not None and high < low:
                upward.append(f"{importer} -> {imported}")
    print(f"imports running up a layer: {len(upward)}")
    for edge in upward:
        print("  " + edge)
    reaches = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "compat" not in path.relative_to(ROOT).parts:
                reaches.extend(_private_reaches(path))
    print(f"third-party private names reached outside innera/compat: {len(reaches)}")
    for reach in reaches:
        print("  " + reach)


if __name__ == "__main__":
    main()
