"""Layers of NCSN++ / DDPM++ (NHWC): GroupNorms of min(C // 4, 32) groups, epsilon 1e-6;
`init_scale` scales the "zero-initialised" output convolutions (0 means 1e-10)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax.models import layers
from score_jax.models import up_or_down_sampling as updown

Array = jax.Array
conv1x1 = layers.conv1x1
conv3x3 = layers.conv3x3
NIN = layers.NIN
skip_sum = layers.skip_sum


def group_norm(channels: int) -> nn.GroupNorm:
    """NCSN++'s GroupNorm for `channels` features: min(channels // 4, 32) groups."""
    return layers.group_norm(min(channels // 4, 32))


class GaussianFourierProjection(nn.Module):
    """Random Fourier features (B,) -> (B, 2 * embedding_size) = [sin, cos](2 pi x W); the
    parameter `W` (embedding_size,) ~ N(0, scale^2) gets no gradient."""

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        x_proj = x[:, None] * jax.lax.stop_gradient(w)[None, :] * 2 * np.pi
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
    """conv1x1(x) of the input pyramid concatenated (`cat`) or added (`sum`) to the features `y`."""

    method: str = "cat"

    @nn.compact
    def __call__(self, x, y):
        h = conv1x1(x, y.shape[-1])
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"model.progressive_combine={self.method!r} is unknown; valid: cat, sum")


class AttnBlockpp(nn.Module):
    """DDPM self-attention with NCSN++ groups, output `init_scale` and optional skip rescaling."""

    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x):
        h = layers.self_attention(x, group_norm(x.shape[-1])(x), out_init_scale=self.init_scale)
        return skip_sum(x, h, self.skip_rescale)


class _Resample(nn.Module):
    """2x resampling to `out_ch` channels (default: unchanged; must be unchanged without a conv)."""

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)

    def channels(self, x) -> int:
        out_ch = self.out_ch or x.shape[-1]
        if not self.with_conv and out_ch != x.shape[-1]:
            raise ValueError(f"{type(self).__name__} without conv cannot map {x.shape[-1]} -> "
                             f"{out_ch} channels")
        return out_ch


class Upsample(_Resample):
    """fir=False: nearest, then 3x3 `Conv_0` if `with_conv`; fir=True: FIR `upsample_2d`, or the
    fused FIR transposed convolution `Conv2d_0` if `with_conv`."""

    @nn.compact
    def __call__(self, x):
        out_ch = self.channels(x)
        if not self.fir:
            h = updown.naive_upsample_2d(x, 2)
            return conv3x3(h, out_ch) if self.with_conv else h
        if not self.with_conv:
            return updown.upsample_2d(x, self.fir_kernel, factor=2)
        return updown.Conv2d(out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel,
                             kernel_init=layers.default_init())(x)


class Downsample(_Resample):
    """fir=False: stride-2 3x3 `Conv_0` or 2x2 average pooling; fir=True: fused FIR + stride-2
    `Conv2d_0`, or FIR `downsample_2d` without a conv."""

    @nn.compact
    def __call__(self, x):
        out_ch = self.channels(x)
        if not self.fir:
            if self.with_conv:
                return conv3x3(x, out_ch, stride=2)
            return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
        if not self.with_conv:
            return updown.downsample_2d(x, self.fir_kernel, factor=2)
        return updown.Conv2d(out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel,
                             kernel_init=layers.default_init())(x)


class ResnetBlockDDPMpp(layers.ResnetBlockDDPM):
    """DDPM's ResNet block with NCSN++ GroupNorms (min(C // 4, 32) groups)."""

    def groups(self, channels: int) -> int:
        return min(channels // 4, 32)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN ResNet block resampling (`up` / `down`, FIR or nearest / average) both branches after
    the first GroupNorm + act; `Dense_0` only with a time embedding, 1x1 `Conv_2` when it resamples
    or changes channels."""

    act: Callable[[Array], Array]
    up: bool = False
    down: bool = False
    out_ch: Optional[int] = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0

    def _resample(self, x):
        if self.up:
            return (updown.upsample_2d(x, self.fir_kernel, factor=2) if self.fir
                    else updown.naive_upsample_2d(x, factor=2))
        if self.down:
            return (updown.downsample_2d(x, self.fir_kernel, factor=2) if self.fir
                    else updown.naive_downsample_2d(x, factor=2))
        return x

    @nn.compact
    def __call__(self, x, temb: Optional[Array] = None, train: bool = False):
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = self._resample(self.act(group_norm(c)(x)))
        x = self._resample(x)
        h = conv3x3(h, out_ch)
        if temb is not None:
            h = h + nn.Dense(out_ch, kernel_init=layers.default_init(), dtype=temb.dtype)(
                self.act(temb))[:, None, None]
        h = self.act(group_norm(out_ch)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale)
        if c != out_ch or self.up or self.down:
            x = conv1x1(x, out_ch)
        return skip_sum(x, h, self.skip_rescale)
