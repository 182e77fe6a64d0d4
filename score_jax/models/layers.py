"""Layers of the DDPM and NCSN++ networks (NHWC). Convolutions are created in the caller's compact
method (`Conv_0`, ...), initialised as DDPM (fan_avg uniform, `init_scale` 0 means 1e-10, zero
biases); layers compute in their input's dtype, GroupNorm statistics and softmax in float32."""
from __future__ import annotations

import math
import string
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from score_jax.models.up_or_down_sampling import naive_upsample_2d

Array = jax.Array


def default_init(scale: float = 1.0):
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def get_act(config) -> Callable[[Array], Array]:
    """The activation named by `config.model.nonlinearity` (elu | relu | lrelu | swish)."""
    name = config.model.nonlinearity.lower()
    acts = {"elu": nn.elu, "relu": nn.relu, "swish": nn.swish,
            "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2)}
    if name not in acts:
        raise ValueError(f"model.nonlinearity={config.model.nonlinearity!r} is unknown; "
                         f"valid: {sorted(acts)}")
    return acts[name]


class GroupNorm(nn.Module):
    """Group normalisation of (B, H, W, C), parameters `scale`, `bias` (C,), float32 statistics."""

    num_groups: int
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels are not divisible into "
                             f"{self.num_groups} groups")
        per_group = c // self.num_groups
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))

        # Group sums from per-channel sums: XLA:CPU vectorises those over C (several times faster
        # than flax.linen.GroupNorm's (B, H, W, G, C / G) view).
        def group_mean(v):  # (B, H, W, C) -> (B, 1, 1, C): each channel gets its group's mean
            sums = jnp.sum(v, axis=(1, 2)).reshape(b, self.num_groups, per_group).sum(-1)
            return jnp.repeat(sums / (h * w * per_group), per_group, axis=1)[:, None, None, :]

        centred = x.astype(jnp.float32) - group_mean(x.astype(jnp.float32))
        inv_std = lax.rsqrt(group_mean(centred * centred) + self.epsilon)
        return (centred * (inv_std * scale) + bias).astype(x.dtype)


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class UNet(nn.Module):
    """Base of the U-Nets `ddpm` and `ncsnpp`, configured by `config.model`."""

    config: ml_collections.ConfigDict

    def hparams(self):
        m = self.config.model
        return (get_act(self.config), m.nf, tuple(m.ch_mult), m.num_res_blocks,
                tuple(m.attn_resolutions))


def time_mlp(temb: Array, nf: int, act, dtype) -> Array:
    """The U-Nets' two Dense layers (nf * 4 features) over a time embedding (B, D)."""
    temb = nn.Dense(nf * 4, kernel_init=default_init(), dtype=dtype)(temb)
    return nn.Dense(nf * 4, kernel_init=default_init(), dtype=dtype)(act(temb))


def compute_dtype(config):
    """The network's compute dtype: `config.model.dtype`, 'float32' (default) or 'bfloat16'."""
    name = str(config.model.get("dtype", "float32"))
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"model.dtype={name!r} is unknown; valid: {sorted(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def group_norm(num_groups: int) -> GroupNorm:
    return GroupNorm(num_groups=num_groups, epsilon=1e-6)


def ddpm_conv(x: Array, out_ch: int, kernel_size: int, stride: int = 1, bias: bool = True,
              init_scale: float = 1.0) -> Array:
    """A 'SAME' convolution with DDPM initialisation; call inside a compact method."""
    return nn.Conv(out_ch, (kernel_size, kernel_size), strides=(stride, stride), padding="SAME",
                   use_bias=bias, dtype=x.dtype, kernel_init=default_init(init_scale),
                   bias_init=nn.initializers.zeros)(x)


def conv1x1(x: Array, out_ch: int, stride: int = 1, bias: bool = True,
            init_scale: float = 1.0) -> Array:
    return ddpm_conv(x, out_ch, 1, stride, bias, init_scale)


def conv3x3(x: Array, out_ch: int, stride: int = 1, bias: bool = True,
            init_scale: float = 1.0) -> Array:
    """3x3 'SAME' convolution with DDPM initialisation (stride 2: pads at the end only)."""
    return ddpm_conv(x, out_ch, 3, stride, bias, init_scale)


def get_timestep_embedding(timesteps: Array, embedding_dim: int,
                           max_positions: int = 10000) -> Array:
    """Sinusoidal embedding (batch,) -> (batch, embedding_dim) float32 of DDPM / transformers."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape (batch,), got {timesteps.shape}")
    half_dim = embedding_dim // 2
    scale = math.log(max_positions) / (half_dim - 1)
    freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -scale)
    emb = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def contract_inner(x: Array, y: Array) -> Array:
    """tensordot(x, y, 1): contracts the last axis of `x` with the first of `y`."""
    x_chars = string.ascii_lowercase[:x.ndim]
    y_chars = x_chars[-1] + string.ascii_lowercase[x.ndim:x.ndim + y.ndim - 1]
    return jnp.einsum(f"{x_chars},{y_chars}->{x_chars[:-1]}{y_chars[1:]}", x, y)


class NIN(nn.Module):
    """Per-pixel linear layer ("network in network"): parameters `W` (in, out) and `b` (out,)."""

    num_units: int
    init_scale: float = 0.1

    @nn.compact
    def __call__(self, x):
        w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units))
        b = self.param("b", nn.initializers.zeros, (self.num_units,))
        return contract_inner(x, w.astype(x.dtype)) + b.astype(x.dtype)


def self_attention(x: Array, normed: Array, out_init_scale: float) -> Array:
    """DDPM spatial self-attention of `normed` (B, H, W, C), the residual branch only; creates
    `NIN_0..3` (q, k, v, output) in the calling compact method."""
    b, h, w, c = x.shape
    q, k, v = NIN(c)(normed), NIN(c)(normed), NIN(c)(normed)
    logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k, preferred_element_type=jnp.float32)
    logits = logits * (int(c) ** -0.5)
    weights = jax.nn.softmax(logits.reshape(b, h, w, h * w), axis=-1).reshape(b, h, w, h, w)
    out = jnp.einsum("bhwHW,bHWc->bhwc", weights.astype(v.dtype), v)
    return NIN(c, init_scale=out_init_scale)(out)


class AttnBlock(nn.Module):
    """DDPM channel-wise self-attention block: x + attn(GroupNorm_32(x))."""

    @nn.compact
    def __call__(self, x):
        return x + self_attention(x, group_norm(32)(x), out_init_scale=0.0)


class Upsample(nn.Module):
    """DDPM nearest-neighbour 2x upsampling, followed by a 3x3 conv if `with_conv`."""

    with_conv: bool = False

    @nn.compact
    def __call__(self, x):
        h = naive_upsample_2d(x, 2)
        return conv3x3(h, x.shape[-1]) if self.with_conv else h


class Downsample(nn.Module):
    """DDPM 2x downsampling: stride-2 3x3 conv if `with_conv`, else 2x2 average pooling."""

    with_conv: bool = False

    @nn.compact
    def __call__(self, x):
        if self.with_conv:
            return conv3x3(x, x.shape[-1], stride=2)
        return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


class ResnetBlockDDPM(nn.Module):
    """DDPM ResNet block: GroupNorm -> act -> conv (+ Dense(temb)) -> GroupNorm -> act -> dropout
    -> conv (zero init), with a NIN (or 3x3 `conv_shortcut`) skip when channels change."""

    act: Callable[[Array], Array]
    out_ch: Optional[int] = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    # NCSN++'s variant (layerspp.ResnetBlockDDPMpp) sets these and its own `groups`.
    skip_rescale: bool = False
    init_scale: float = 0.0

    def groups(self, channels: int) -> int:
        return 32

    @nn.compact
    def __call__(self, x, temb: Optional[Array] = None, train: bool = False):
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = conv3x3(self.act(group_norm(self.groups(c))(x)), out_ch)
        if temb is not None:
            h = h + nn.Dense(out_ch, kernel_init=default_init(), dtype=temb.dtype)(
                self.act(temb))[:, None, None, :]
        h = self.act(group_norm(self.groups(out_ch))(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(h, out_ch, init_scale=self.init_scale)
        if c != out_ch:
            x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
        return skip_sum(x, h, self.skip_rescale)


def skip_sum(x: Array, h: Array, skip_rescale: bool) -> Array:
    """x + h, divided by sqrt(2) with `skip_rescale` (a Python float: keeps x's dtype)."""
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h



def centers_input(config) -> bool:
    """Whether the network maps x to 2x - 1: `model.center_input`, else `not data.centered`."""
    center = config.model.get("center_input", None)
    return (not config.data.centered) if center is None else bool(center)


def get_sigmas(config) -> np.ndarray:
    """Noise table float64 (`model.num_scales`,), geometric from sigma_max down to sigma_min."""
    return np.exp(np.linspace(np.log(config.model.sigma_max), np.log(config.model.sigma_min),
                              config.model.num_scales))


def check_resolutions(config, x: Array) -> None:
    """ValueError naming `data.image_size` (or the input) unless divisible by 2**(levels - 1)."""
    num_resolutions = len(config.model.ch_mult)
    factor = 2 ** (num_resolutions - 1)
    for what, size in (("data.image_size", config.data.image_size),
                       ("input height", x.shape[1]), ("input width", x.shape[2])):
        if size % factor:
            raise ValueError(
                f"{what}={size} does not fit the network: its {num_resolutions} levels "
                f"(model.ch_mult={tuple(config.model.ch_mult)}) need resolutions "
                f"{[size / 2 ** i for i in range(num_resolutions)]}, all integers")
