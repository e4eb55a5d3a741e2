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
