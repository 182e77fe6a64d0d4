"""score_jax.utils: the persistent compilation cache; the XLA:CPU flag set by `import score_jax`."""
import importlib.metadata
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax.experimental.compilation_cache import compilation_cache

import score_jax
from score_jax import utils

_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


def test_compilation_cache_stores_and_reloads_a_program(tmp_path, monkeypatch):
    saved = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
    monkeypatch.setenv(utils.COMPILATION_CACHE_ENV, str(tmp_path / "from_env"))
    assert utils.default_compilation_cache_dir() == str(tmp_path / "from_env")
    assert utils.enable_compilation_cache("") is None
    assert jax.config.jax_compilation_cache_dir == saved["jax_compilation_cache_dir"]
    try:
        assert utils.enable_compilation_cache(str(tmp_path / "cache")) == str(tmp_path / "cache")
        compilation_cache.reset_cache()  # the test process may have checked the cache already
        fn = lambda x: jnp.sin(x) * 3.0 + 1.0  # noqa: E731
        jax.jit(fn)(jnp.arange(3.0)).block_until_ready()
        entries = [p.name for p in (tmp_path / "cache").iterdir()]
        assert any(name.startswith("jit__lambda") for name in entries), entries
        # A fresh jit of the same program (as in a second run) is loaded from the cache.
        events = []
        listener = lambda event, **kwargs: events.append(event)  # noqa: E731
        jax.monitoring.register_event_listener(listener)
        try:
            jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(3.0)).block_until_ready()
        finally:
            jax.monitoring.unregister_event_listener(listener)
        assert "/jax/compilation_cache/cache_hits" in events, events
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


_PROBE = """
import json, os
import score_jax, jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
x, w = jnp.ones((8, 32, 32, 64)), jnp.ones((3, 3, 64, 64))  # small ones never go to YNNPACK
hlo = jax.jit(conv).lower(x, w).compile().as_text()
# The program is one convolution: a YNNPACK fusion in it can only hold the convolution.
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "ynn": "__ynn_fusion" in hlo}))
"""


def _probe(**env_changes):
    unset = ("XLA_FLAGS", score_jax.KEEP_XLA_FLAGS_ENV)
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(JAX_PLATFORMS="cpu", **env_changes)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_importing_score_jax_takes_cpu_convolutions_off_ynnpack():
    """jaxlib 0.10's XLA:CPU runs convolutions in YNNPACK, 1.3-2.4x slower here than its own;
    `import score_jax` appends the flag that stops it, keeps the user's flags and honours
    opt-outs."""
    devices = "--xla_force_host_platform_device_count=2"
    ours = _probe(XLA_FLAGS=devices)
    if not importlib.metadata.version("jaxlib").startswith("0.10."):
        assert ours["flags"] == devices  # only the jaxlib it was measured on gets the flag
        return
    assert ours["flags"] == f"{devices} {score_jax._CPU_CONV_FLAG}"
    kept = _probe(**{score_jax.KEEP_XLA_FLAGS_ENV: "1"})
    assert kept["flags"] == ""
    # The flag takes effect: jax's default puts the convolution in a YNNPACK fusion, ours does not.
    assert kept["ynn"] and not ours["ynn"]
    user = "--xla_cpu_experimental_ynn_fusion_type="
    assert _probe(XLA_FLAGS=user)["flags"] == user


def test_settings_key_hashes_arrays_and_files_by_value(tmp_path):
    """Outputs are keyed by `settings_key`: an array and the list of its values give the same
    key, a grid file edited in place another one, and `settings_dir` records the values."""
    import numpy as np

    from score_jax import utils

    grid = str(tmp_path / "grid.npy")
    np.save(grid, np.arange(3.0))
    first = utils.settings_key({"time_grid": grid, "nfe": 5})
    assert utils.settings_key({"nfe": 5, "time_grid": grid}) == first  # key order is irrelevant
    np.save(grid, np.arange(4.0))
    assert utils.settings_key({"time_grid": grid, "nfe": 5}) != first
    assert (utils.settings_key({"time_grid": np.arange(3.0)})
            == utils.settings_key({"time_grid": [0.0, 1.0, 2.0]}))
    assert utils.settings_key({"method": "pc"}) != utils.settings_key({"method": "ode"})
    path = utils.settings_dir(str(tmp_path / "out"), "pc", {"seed": 1, "grid": np.arange(2)})
    assert os.path.basename(path) == "pc_" + utils.settings_key({"seed": 1, "grid": [0, 1]})
    with open(os.path.join(path, "settings.json")) as f:
        assert json.load(f) == {"grid": [0, 1], "seed": 1}
