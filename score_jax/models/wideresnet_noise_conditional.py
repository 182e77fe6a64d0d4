"""The noise-conditional Wide-ResNet classifier, registered as `wideresnet_noise_conditional`.

`model.apply(variables, x, sigmas, train=...)`: x (B, H, W, C) float32 at any size (global
average pooling), sigmas (B,) the noise std in x (`sde.sigma(t)`) -> logits (B, num_classes).
WRN-(6 blocks_per_group + 4)-channel_multiplier with a Fourier embedding of log sigma added in
every block; its parameter tree is that of score_sde's released classifier checkpoint."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_jax.models import register_model
from score_jax.models.layerspp import GaussianFourierProjection

# Kaiming normal, fan_out (as the official convolutions).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _dense_out_init(key, shape, dtype=jnp.float32):
    """U[-1, 1) / sqrt(num_classes) initializer of the logits layer."""
    return jax.random.uniform(key, shape, dtype, -1.0) / np.sqrt(shape[1])


def _activation(x, name: str, relu: bool = True):
    x = nn.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5, name=name)(x)
    return nn.relu(x) if relu else x


def _output_add(block_x, orig_x):
    """block_x + orig_x, the shortcut average-pooled and zero-padded to block_x's shape."""
    if block_x.shape[-1] != orig_x.shape[-1]:
        stride = orig_x.shape[-2] // block_x.shape[-2]
        orig_x = nn.avg_pool(orig_x, (stride, stride), (stride, stride))
        orig_x = jnp.pad(orig_x, [(0, 0)] * 3 + [(0, block_x.shape[-1] - orig_x.shape[-1])])
    return block_x + orig_x


class WideResnetBlock(nn.Module):
    channels: int
    strides: tuple[int, int] = (1, 1)
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x, temb):
        # The first block of the network normalises before the split, so its shortcut carries
        # the activated input; the others normalise on the residual branch only.
        if self.activate_before_residual:
            x = _activation(x, "init_bn")
            block_x = x
        else:
            block_x = _activation(x, "init_bn")
        block_x = nn.Conv(self.channels, (3, 3), self.strides, padding="SAME", use_bias=False,
                          kernel_init=_conv_init, name="conv1")(block_x)
        block_x += nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :]
        block_x = _activation(block_x, "bn_2")
        block_x = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False,
                          kernel_init=_conv_init, name="conv2")(block_x)
        return _output_add(block_x, x)


class WideResnetGroup(nn.Module):
    blocks_per_group: int
    channels: int
    strides: tuple[int, int] = (1, 1)
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x, temb):
        for i in range(self.blocks_per_group):
            x = WideResnetBlock(self.channels, self.strides if i == 0 else (1, 1),
                                activate_before_residual=self.activate_before_residual and i == 0,
                                )(x, temb)
        return x


@register_model(name="wideresnet_noise_conditional")
class WideResnet(nn.Module):
    """Noise-conditional WRN classifier; logits (B, classifier.num_classes)."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x, sigmas, train: bool = False):
        del train  # no dropout nor batch statistics
        c = self.config.classifier
        n, k = int(c.blocks_per_group), int(c.channel_multiplier)
        # Per-image standardization (the floor keeps constant images finite).
        std_floor = 1.0 / np.sqrt(np.prod(x.shape[1:]))
        x = ((x - jnp.mean(x, axis=(1, 2, 3), keepdims=True))
             / jnp.maximum(jnp.std(x, axis=(1, 2, 3), keepdims=True), std_floor))
        temb = GaussianFourierProjection(embedding_size=128, scale=16.0)(jnp.log(sigmas))
        temb = nn.Dense(128 * 4)(temb)
        temb = nn.Dense(128 * 4)(nn.swish(temb))

        x = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init,
                    name="init_conv")(x)
        x = WideResnetGroup(n, 16 * k, activate_before_residual=True)(x, temb)
        x = WideResnetGroup(n, 32 * k, (2, 2))(x, temb)
        x = WideResnetGroup(n, 64 * k, (2, 2))(x, temb)
        x = _activation(x, "pre-pool-bn")
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(int(c.num_classes), kernel_init=_dense_out_init)(x)
