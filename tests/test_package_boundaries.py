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
