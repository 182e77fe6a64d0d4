"""Score networks, the noise-conditional classifier, and their registry (families load lazily)."""
import importlib

_MODELS = {}
# model.name -> module that defines it (imported on first use).
_FAMILIES = {
    "ncsnpp": "score_jax.models.ncsnpp",
    "ddpm": "score_jax.models.ddpm",
    "ncsnv2_64": "score_jax.models.ncsnv2",
    "ncsnv2_128": "score_jax.models.ncsnv2",
    "ncsnv2_256": "score_jax.models.ncsnv2",
    "ncsn": "score_jax.models.ncsn",
    "wideresnet_noise_conditional": "score_jax.models.wideresnet_noise_conditional",
}


def register_model(cls=None, *, name=None):
    """Class decorator adding a network to the registry under `name` (default: class name)."""

    def _register(cls):
        key = cls.__name__ if name is None else name
        if key in _MODELS and _MODELS[key] is not cls:
            raise ValueError(f"model.name={key!r} is registered twice")
        _MODELS[key] = cls
        return cls

    return _register if cls is None else _register(cls)


def get_model(name: str):
    """The Flax module class of `config.model.name`; raises ValueError listing valid names."""
    if name not in _MODELS and name in _FAMILIES:
        importlib.import_module(_FAMILIES[name])
    if name not in _MODELS:
        raise ValueError(f"model.name={name!r} is unknown; valid: {sorted(_FAMILIES)}")
    return _MODELS[name]
