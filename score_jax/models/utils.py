"""Building networks from configs and turning their outputs into scores.

Every network is a Flax linen module called as `model.apply(variables, x, labels, train=...)` with
`x` (batch, H, W, C) float32 and `labels` (batch,) — a noise level, a time label or an integer noise
index, depending on the SDE and on `training.continuous` (see `get_score_fn`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from score_jax import sde as sde_lib
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
    """`score_fn(x, t)` of the official parameterisation (x: (B, H, W, C), t: (B,) in [0, T]).

    * VP / sub-VP: the network predicts the noise; score = -output / std(t). Its label is 999 t
      (continuous training, and always for sub-VP) with std from `marginal_prob`, or the DDPM index
      t (N-1) (a float, as in the official code) with std = sqrt(1 - alpha_bar[floor(t (N-1))]).
    * VE: the network output is the score. Its label is sigma(t) (continuous) or the reversed
      integer noise index round((T - t)(N-1)) (discrete; the networks index their sigma table,
      which runs from sigma_max down to sigma_min).
    """
    model_fn = get_model_fn(model, variables, train=train, rng=rng)

    if isinstance(sde, sde_lib.VPSDE):  # also sub-VP (a VPSDE subclass)

        def score_fn(x, t):
            if continuous or isinstance(sde, sde_lib.subVPSDE):
                labels = t * 999
                std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            else:
                labels = t * (sde.N - 1)
                std = jnp.asarray(sde.sqrt_1m_alphas_cumprod)[labels.astype(jnp.int32)]
            return sde_lib.batch_mul(-1.0 / std, model_fn(x, labels))

    elif isinstance(sde, sde_lib.VESDE):

        def score_fn(x, t):
            if continuous:
                labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            else:
                labels = jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
            return model_fn(x, labels)

    else:
        raise ValueError(f"SDE class {type(sde).__name__} is not supported by get_score_fn")
    return score_fn
