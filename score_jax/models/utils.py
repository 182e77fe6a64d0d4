"""Building networks from configs and turning their outputs into scores.

Every network is a Flax linen module called as `model.apply(variables, x, labels, train=...)` with
`x` (batch, H, W, C) float32 and `labels` (batch,) — a noise level, a time label or an integer noise
index, depending on the SDE and on `training.continuous` (see `get_score_fn`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from score_jax.models import get_model


def create_model(config):
    """The (unbound) Flax module of `config.model.name`, configured by `config`."""
    return get_model(config.model.name)(config=config)


def init_model(rng, config, batch_size: int = 1):
    """Initial variables (`{'params': ...}`) of the config's network, for NHWC inputs."""
    model = create_model(config)
    shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_rng}, jnp.zeros(shape, jnp.float32),
                      jnp.zeros((batch_size,), jnp.float32), train=False)


def get_model_fn(model, variables, train: bool = False, rng=None):
    """`model_fn(x, labels) -> output` with the variables bound; `rng` drives dropout in training."""

    def model_fn(x, labels):
        rngs = {"dropout": rng} if train and rng is not None else None
        return model.apply(variables, x, labels, train=train, rngs=rngs)

    return model_fn


def get_score_fn(sde, model, variables, train: bool = False, continuous: bool = False, rng=None):
    """`score_fn(x, t)` of the official parameterisation (x: (B, H, W, C), t: (B,) in [0, T]): the
    network sees `sde.network_label(t, continuous)` and its output becomes a score through
    `sde.score_from_output` (VP / sub-VP networks predict the noise, VE ones the score)."""
    model_fn = get_model_fn(model, variables, train=train, rng=rng)

    def score_fn(x, t):
        return sde.score_from_output(model_fn(x, sde.network_label(t, continuous)), t, continuous)

    return score_fn
