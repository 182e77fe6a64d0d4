"""Networks from configs; `model.apply(variables, x (B, H, W, C) float32, labels (B,), train)`."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from score_jax.models import get_model


def create_model(config):
    return get_model(config.model.name)(config=config)


def init_model(rng, config, batch_size: int = 1):
    """Initial variables (`{'params': ...}`) of the config's network, for NHWC inputs."""
    model = create_model(config)
    shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_rng}, jnp.zeros(shape, jnp.float32),
                      jnp.zeros((batch_size,), jnp.float32), train=False)


def get_model_fn(model, variables, train: bool = False, rng=None):
    def model_fn(x, labels):
        # `rng` drives dropout, in training only.
        rngs = {"dropout": rng} if train and rng is not None else None
        return model.apply(variables, x, labels, train=train, rngs=rngs)

    return model_fn


def get_score_fn(sde, model, variables, train: bool = False, continuous: bool = False, rng=None):
    """`score_fn(x, t)`, x (B, H, W, C), t (B,) in [0, T], by the SDE's label and output rules."""
    model_fn = get_model_fn(model, variables, train=train, rng=rng)

    def score_fn(x, t):
        return sde.score_from_output(model_fn(x, sde.network_label(t, continuous)), t, continuous)

    return score_fn


def create_classifier(config):
    return get_model(config.classifier.name)(config=config)


def init_classifier(rng, config, batch_size: int = 1):
    shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
    return create_classifier(config).init(rng, jnp.zeros(shape, jnp.float32),
                                          jnp.ones((batch_size,), jnp.float32), train=False)


def get_logit_fn(sde, classifier, variables):
    """`logit_fn(x, t) -> (B, num_classes)` logits; the classifier sees `sde.sigma(t)`."""

    def logit_fn(x, t):
        return classifier.apply(variables, x, sde.sigma(t), train=False)

    return logit_fn


def get_classifier_grad_fn(logit_fn):
    """`grad_fn(x, t, labels) -> grad_x log p(labels | x, t)`, shaped like x."""

    def log_prob(x, t, labels):
        log_p = jax.nn.log_softmax(logit_fn(x, t), axis=-1)
        return jnp.take_along_axis(log_p, labels[:, None], axis=-1).sum()

    return jax.grad(log_prob)
