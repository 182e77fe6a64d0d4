"""score_jax.utils: the persistent compilation cache."""
import jax
import jax.numpy as jnp
from jax.experimental.compilation_cache import compilation_cache

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
