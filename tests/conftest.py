"""Shared test setup: two CPU devices so the data-parallel code paths run on a laptop."""
import os
import pathlib

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No persistent compilation cache for main.py runs inside the tests (nothing written to ~/.cache).
os.environ.setdefault("SCORE_JAX_COMPILATION_CACHE", "")

import pytest  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> pathlib.Path:
    """Folder of the reference arrays copied from the official code's outputs."""
    return DATA
