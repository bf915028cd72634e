"""The codebase's shape, checked: layer order, no hidden backward imports, types.

- Layers: import-linter's contract in pyproject.toml ([tool.importlinter]); a module imports only
  from layers below its own.
- A function-level import of volumed's own modules hides an edge from that check, so one is allowed
  only with a comment saying why (`# deferred: <reason>`, e.g. start-up cost or an optional
  dependency) on the import's line or the line above it.
- Every module imports on its own in a fresh interpreter (a cycle shows up as an ImportError of a
  partly initialised module), and all of them import together in any order.
- mypy, configured in pyproject.toml ([tool.mypy]: strict on the whole volumed package),
  reports nothing.
"""

from __future__ import annotations

import ast
import io
import random
import subprocess
import sys
import tokenize
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "volumed"
DEFERRED_MARK = "deferred:"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> list[str]:
    """Every module of the package except __main__, which runs the CLI when imported."""
    return sorted(_module_name(p) for p in PACKAGE.rglob("*.py")
                  if "__pycache__" not in p.parts and p.name != "__main__.py")


def _comments(source: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string
    return out


def _own_imports_in_functions(path: Path) -> list[tuple[int, str]]:
    source = path.read_text()
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                if node.level > 0 or (node.module or "").split(".")[0] == "volumed":
                    found.append((node.lineno, ast.unparse(node)))
            elif isinstance(node, ast.Import):
                if any(a.name.split(".")[0] == "volumed" for a in node.names):
                    found.append((node.lineno, ast.unparse(node)))
    comments = _comments(source)
    return [
        (line, text)
        for line, text in sorted(set(found))
        if DEFERRED_MARK not in comments.get(line, "") and DEFERRED_MARK not in comments.get(line - 1, "")
    ]


def test_layers_follow_the_contract() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_unexplained_function_level_imports_of_own_modules() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, text in _own_imports_in_functions(path)
    ]
    assert not offenders, (
        f"{len(offenders)} function-level imports of volumed modules without a "
        f"'# {DEFERRED_MARK} <why>' comment:\n" + "\n".join(offenders))


def _import(modules: list[str]) -> subprocess.CompletedProcess[str]:
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    return subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    modules = _modules()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda m: (m, _import([m])), modules))
    failed = [f"{m}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
              for m, r in results if r.returncode != 0]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_modules_import_together_in_any_order(seed: int) -> None:
    modules = _modules()
    random.Random(seed).shuffle(modules)
    result = _import(modules)
    assert result.returncode == 0, result.stderr


def test_type_checker_is_clean() -> None:
    from mypy import api  # a test dependency, imported only by this test

    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                      "--cache-dir", str(ROOT / ".mypy_cache")])
    assert status == 0, stdout + stderr
