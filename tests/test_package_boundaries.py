"""Package boundaries: the layering between glam's packages holds, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    """The glam modules a fresh interpreter holds after ``statement``."""
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith('glam')))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_checkpoint_does_not_import_train():
    """glam.train imports glam.checkpoint (to save and resume); the reverse would be a package cycle."""
    modules = imported_after("import glam.checkpoint, glam.checkpoint.inference, glam.checkpoint.lock")
    assert "glam.checkpoint.state" in modules and "glam.checkpoint.manager" in modules
    assert sorted(m for m in modules if m.startswith("glam.train")) == []


def test_the_installed_package_assumes_no_clone_location_and_ships_no_test_fixtures():
    """Data folders are passed in (--data-root, $GLAM_TASK_DATA); test helpers live in tests/."""
    import importlib.util
    from pathlib import Path

    import glam

    package = Path(glam.__file__).parent
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "shared/data" not in text and '"shared"' not in text, path
    assert importlib.util.find_spec("glam.train.testing") is None


def _unreachable(tree) -> list[int]:
    """Line numbers of statements that follow a return, raise, continue or break in the same block."""
    import ast

    found = []
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, name, None)
            if not isinstance(block, list):
                continue
            for stmt, after in zip(block, block[1:]):
                if isinstance(stmt, ast.Return | ast.Raise | ast.Continue | ast.Break):
                    found.append(after.lineno)
    return found


def test_no_code_sits_after_a_return():
    """ruff's unreachable-code rule (PLW0101) is a test-only rule in ruff 0.17 (not selectable, not even
    with --preview), so this is the check: MoEConfig's number checks once sat after a ``return``, unrun."""
    import ast
    from pathlib import Path

    assert _unreachable(ast.parse("def f():\n    return 1\n    x = 2\n")) == [3]
    root = Path(__file__).resolve().parents[1]
    files = [p for d in ("src", "tests", "benchmarks", "experiments") for p in sorted((root / d).rglob("*.py"))]
    assert len(files) > 50
    bad = [f"{p.relative_to(root)}:{line}" for p in files for line in _unreachable(ast.parse(p.read_text("utf-8")))]
    assert bad == []
