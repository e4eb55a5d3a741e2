"""Test-wide setup: 8 simulated CPU devices for the sharding tests.

XLA reads the flag when the CPU backend starts, so it is set here, before any test imports JAX.
Single-device computations run on device 0 as usual.
"""

import os
from pathlib import Path

import pytest

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's real data folder (../shared/data), or skip when this clone doesn't have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it ships beside the repository, not in it)")
    return SHARED_DATA
