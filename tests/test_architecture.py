"""The architecture holds (docs/architecture.md): the layer contract of pyproject.toml passes
``lint-imports``; the import graph has no cycle, imports inside functions included; the HTTP
layer holds no SQL; library internals are reached only from ``innera/compat``, one module per
library, each pinned in pyproject.toml to the range it was written for."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import grimp

from innera.compat import Supported

ROOT = Path(__file__).resolve().parent.parent


def _stats() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "architecture_stats", ROOT / "scripts" / "architecture_stats.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("innera", "workers", include_external_packages=False)


def test_the_layer_contract_holds() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_every_layer_of_the_contract_exists() -> None:
    """No layer is marked optional: a module renamed away would otherwise drop out of the
    contract silently."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    assert not [layer for layer in layers if "(" in layer]


def test_the_import_graph_has_no_cycles() -> None:
    cycles = _stats()._cycles(_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_nothing_below_the_http_layer_imports_it() -> None:
    graph = _graph()
    http = ("innera.api", "innera.http", "innera.app")
    above = ("innera.cli", "innera.process", *http)
    offenders = []
    for module in sorted(graph.modules):
        if module.startswith(above):
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(http):
                offenders.append(f"{module} -> {imported}")
    assert offenders == []


SQL = re.compile(r"\b(SELECT\s|INSERT\s+INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET)|"
                 r"\.(execute|executemany|fetchone|fetchall|fetchrow)\(", re.IGNORECASE)


def test_no_sql_in_the_http_layer() -> None:
    """Blueprints parse, call one domain function and render; the SQL lives in the domain.
    The test-only debug routes aside."""
    found = []
    for path in sorted((ROOT / "innera" / "api").rglob("*.py")):
        if path.name == "debug.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SQL.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_library_internals_are_reached_only_from_innera_compat() -> None:
    stats = _stats()
    reaches = [reach for package in ("innera", "workers")
               for path in sorted((ROOT / package).rglob("*.py"))
               if "compat" not in path.relative_to(ROOT).parts
               for reach in stats._private_reaches(path)]
    assert reaches == []


def _compat_modules() -> list[str]:
    return sorted(p.stem for p in (ROOT / "innera" / "compat").glob("*.py")
                  if p.stem != "__init__")


def test_each_compat_module_is_used_by_one_module_and_tested_and_pinned() -> None:
    graph = _graph()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [*dependencies["dependencies"],
            *(d for extra in dependencies["optional-dependencies"].values() for d in extra)]
    assert _compat_modules(), "innera/compat holds no library module"
    for name in _compat_modules():
        module = importlib.import_module(f"innera.compat.{name}")
        importers = {m for m in graph.find_modules_that_directly_import(f"innera.compat.{name}")
                     if not m.startswith("innera.compat")}
        assert len(importers) == 1, f"innera.compat.{name} is imported by {sorted(importers)}"
        assert (ROOT / "tests" / "compat" / f"test_{name}.py").exists()
        guards = [v for v in vars(module).values() if isinstance(v, Supported)]
        assert guards, f"innera/compat/{name}.py states no Supported range"
        for guard in guards:
            guard.check()
            pin = [p for p in pins if re.match(rf"{re.escape(guard.distribution)}(\[|>|<|=|$)",
                                               p, re.IGNORECASE)]
            assert pin, f"{guard.distribution} is not pinned in pyproject.toml"
            assert f">={guard.lowest}" in pin[0] and f"<{guard.below}" in pin[0], (
                f"pyproject.toml pins {pin[0]!r}, innera/compat/{name}.py was written for "
                f">={guard.lowest},<{guard.below}")
