"""The code's shape, checked from the test suite (so CI runs it): the lint tools pinned in the
`test` extra (ruff check, mypy on the leaf layer distill/core, import-linter's layer contracts in
pyproject.toml) and the size limits (module <= 400 lines, function <= 60 lines)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGES = ("orchestrator", "trainer", "distill")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _tool(name: str, *args: str) -> None:
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"{exe} is missing. Fix: pip install -e '.[test]' (pins ruff, mypy, import-linter)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([str(exe), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{name} {' '.join(args)} failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"


def test_ruff_check():
    _tool("ruff", "check", ".")


def test_ruff_format():
    _tool("ruff", "format", "--check", ".")  # fix: ruff format .


def test_mypy_on_the_leaf_layer():
    _tool("mypy")  # files and strictness: [tool.mypy] in pyproject.toml


def test_import_layers():
    _tool("lint-imports")  # contracts: [tool.importlinter] in pyproject.toml


def _has_size_reason(lines: list[str], first_line: int) -> bool:
    """The line directly above a def (or its first decorator) is a comment containing `size:`."""
    above = lines[first_line - 2].strip() if first_line >= 2 else ""
    return above.startswith("#") and "size:" in above


def oversized(root: Path) -> dict[str, int]:
    """{"path.py": lines} for modules over the limit and {"path.py::function": lines} for functions
    over it without a `size:` reason."""
    out: dict[str, int] = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            lines = f.read_text(encoding="utf-8").splitlines()
            if len(lines) > MAX_MODULE_LINES:
                out[rel] = len(lines)
            for node in ast.walk(ast.parse("\n".join(lines), filename=rel)):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = (node.end_lineno or node.lineno) - first + 1
                if n > MAX_FUNCTION_LINES and not _has_size_reason(lines, first):
                    out[f"{rel}::{node.name}"] = n
    return out


def test_sizes():
    found = oversized(ROOT)
    assert not found, (
        "over the size limits (module <= 400 lines; function <= 60 lines unless the line above its "
        "def says `# size: why`); split them:\n" + "\n".join(f"  {k}: {v} lines" for k, v in found.items())
    )


def test_size_check_sees_oversized_code_and_honours_a_reason(tmp_path):
    pkg = tmp_path / "trainer"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (pkg / "big.py").write_text(
        "def long():\n" + body + "\n\n# size: one table, read top to bottom\n"
        "@staticmethod\ndef explained():\n" + body + "\n" * MAX_MODULE_LINES
    )
    assert oversized(tmp_path) == {
        "trainer/big.py": 2 * (MAX_FUNCTION_LINES + 1) + 5 + MAX_MODULE_LINES - 1,
        "trainer/big.py::long": MAX_FUNCTION_LINES + 1,
    }


def test_every_module_imports():
    """A module no test reaches directly (e.g. one only a slow path loads) still imports: a moved or renamed
    module leaves no stale import behind."""
    import importlib

    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            if name == "distill.__main__":
                continue  # runs the CLI
            importlib.import_module(name)
