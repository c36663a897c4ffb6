"""The layout's import rules (issue 23): the contracts in pyproject.toml ([tool.importlinter]:
kbd.model imports nothing of kbd outside it but kbd.errors, only kbd.store imports SQLAlchemy
and Alembic, only kbd.model and kbd.runtime import torch), no module in an import cycle, and no
import below a module's code. Imports inside functions count for all of them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kbd"


def test_the_import_contracts_hold():
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports; "
         "raise SystemExit(lint_imports(config_filename='pyproject.toml', no_cache=True, "
         "no_logo=True))"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout, run.stdout[-2000:]


def test_no_module_is_in_an_import_cycle():
    graph = grimp.build_graph("kbd", cache_dir=None)
    cycles = [(module, imported, graph.find_shortest_chain(imported, module))
              for module in sorted(graph.modules)
              for imported in sorted(graph.find_modules_directly_imported_by(module))
              if graph.chain_exists(imported, module)]
    assert not cycles, "\n".join(f"{m} -> {i}, and back: {' -> '.join(c)}" for m, i, c in cycles)


def test_every_package_is_in_the_import_graph():
    # grimp skips a folder without __init__.py, and with it every rule about its modules
    graph = grimp.build_graph("kbd", cache_dir=None)
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    missing = [str(f.relative_to(ROOT)) for f in sorted(folders)
               if ".".join(f.relative_to(ROOT).parts) not in graph.modules]
    assert not missing, missing


def late_imports(tree: ast.Module) -> list[int]:
    """Lines of module-level imports that come after a statement other than the docstring,
    or another import (what ruff's E402 means)."""
    code_seen, late = False, []
    for i, node in enumerate(tree.body):
        if isinstance(node, ast.Import | ast.ImportFrom):
            if code_seen:
                late.append(node.lineno)
        elif not (i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            code_seen = True
    return late


def test_no_import_sits_below_code():
    late = {str(path.relative_to(ROOT)): lines for path in sorted(PACKAGE.rglob("*.py"))
            if (lines := late_imports(ast.parse(path.read_text())))}
    assert not late, late
    noqa = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "E402" in p.read_text()]
    assert not noqa, noqa
