"""InstanceNorm++ (Song & Ermon, 2019) and its noise-conditional form, for NCSN and NCSNv2 (NHWC).

Parameters `alpha`, `gamma`, `beta` (1, 1, 1, C); the conditional layer's `Embed_0/embedding`
(num_classes, 3C) has columns [gamma | alpha | beta]. At least two channels (ValueError)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

_EPS = 1e-5


def _normal_around_one(key, shape, dtype=jnp.float32):
    # N(1, 0.02^2): the InstanceNorm++ scales.
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _instance_norm_plus_parts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x - mu_c) / sigma_c per example and channel, and the standardised channel means (B, C)."""
    if x.shape[-1] < 2:
        raise ValueError(f"InstanceNorm++ needs at least 2 channels, got {x.shape[-1]}")
    means = jnp.mean(x, axis=(1, 2))
    m = jnp.mean(means, axis=-1, keepdims=True)
    # Unbiased across channels as in PyTorch (`torch.var`), biased within a channel (eps 1e-5).
    v = jnp.var(means, axis=-1, keepdims=True, ddof=1)
    means_plus = (means - m) / jnp.sqrt(v + _EPS)
    h = (x - means[:, None, None, :]) / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + _EPS)
    return h, means_plus[:, None, None, :]


class InstanceNorm2dPlus(nn.Module):
    """gamma * (IN(x) + alpha * standardised channel means) + beta; x (B, H, W, C) -> same."""

    bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        h, means_plus = _instance_norm_plus_parts(x)
        h = h + means_plus * self.param("alpha", _normal_around_one, (1, 1, 1, c))
        h = h * self.param("gamma", _normal_around_one, (1, 1, 1, c))
        if self.bias:
            h = h + self.param("beta", nn.initializers.zeros, (1, 1, 1, c))
        return h


class ConditionalInstanceNorm2dPlus(nn.Module):
    """InstanceNorm++ with gamma, alpha, beta from an embedding of the class y (B,) int."""

    num_classes: int
    bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        c = x.shape[-1]
        n_parts = 3 if self.bias else 2

        def init_embed(key, shape, dtype=jnp.float32):
            scales = _normal_around_one(key, (shape[0], 2 * c), dtype)
            return jnp.concatenate([scales, jnp.zeros((shape[0], shape[1] - 2 * c), dtype)], -1)

        embed = nn.Embed(self.num_classes, n_parts * c, embedding_init=init_embed)
        parts = jnp.split(embed(jnp.asarray(y).astype(jnp.int32)), n_parts, axis=-1)
        gamma, alpha = parts[0][:, None, None, :], parts[1][:, None, None, :]
        h, means_plus = _instance_norm_plus_parts(x)
        out = gamma * (h + means_plus * alpha)
        if self.bias:
            out = out + parts[2][:, None, None, :]
        return out


def get_normalization(config, conditional: bool = False):
    """The class of `model.normalization` ('InstanceNorm++'), conditional on `model.num_scales`."""
    norm = config.model.normalization
    if norm != "InstanceNorm++":
        raise ValueError(f"model.normalization={norm!r} is not supported by the NCSN family; "
                         "valid: 'InstanceNorm++'")
    if not conditional:
        return InstanceNorm2dPlus
    num_classes = int(config.model.get("num_classes", config.model.num_scales))
    if num_classes != config.model.num_scales:
        raise ValueError(f"model.num_classes={num_classes} must equal model.num_scales="
                         f"{config.model.num_scales}: NCSN conditions on the noise-level index")
    return functools.partial(ConditionalInstanceNorm2dPlus, num_classes=num_classes)
