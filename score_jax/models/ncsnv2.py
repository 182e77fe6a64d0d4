"""NCSNv2 (Song & Ermon, 2020): RefineNet score networks for 64, 128 and 256 px, in Flax.

`ncsnv2_64`, `ncsnv2_128`, `ncsnv2_256` halve the resolution 1, 2, 3 times (`data.image_size` a
multiple of 2, 4, 8). Input mapped to 2x - 1 unless `data.centered`; labels are integer noise
indices (floats truncated); with `model.scale_by_sigma` the output is divided by `sigmas[labels]`
(geometric, `model.num_scales` entries)."""
from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_jax.models import register_model
from score_jax.models.layers import compute_dtype, get_act, get_sigmas
from score_jax.models.normalization import get_normalization

Array = jax.Array


def _torch_default_init(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for conv weights and biases."""
    bound = 1.0 / np.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)


def ncsn_conv(x: Array, features: int, kernel_size: int = 3, dilation: int = 1,
         bias: bool = True) -> Array:
    """'SAME'-padded (also dilated) convolution with PyTorch's default init; call inside compact."""
    init = _torch_default_init(kernel_size * kernel_size * x.shape[-1])
    # 'SAME' for dilated convolutions too: the original NCSNv2 code's fix, used for the reference.
    return nn.Conv(features, (kernel_size, kernel_size), padding="SAME",
                   kernel_dilation=(dilation, dilation), use_bias=bias, kernel_init=init,
                   bias_init=init)(x)


def _normalize(normalization, x: Array, y: Optional[Array]) -> Array:
    """A new normalization layer applied to x (conditioned on y when y is not None)."""
    layer = normalization()
    return layer(x) if y is None else layer(x, y)


def resize_bilinear_align_corners(x: Array, size: Sequence[int]) -> Array:
    """Bilinear resize of (B, H, W, C) to `size` (h, w), aligned corners: output i reads input
    i (in - 1) / (out - 1)."""
    for axis, out in zip((1, 2), size):
        n = x.shape[axis]
        if n == out:
            continue
        src = np.arange(out) * ((n - 1) / (out - 1)) if out > 1 else np.zeros(1)
        i0 = np.minimum(np.floor(src).astype(np.int32), n - 1)
        i1 = np.minimum(i0 + 1, n - 1)
        shape = [1, 1, 1, 1]
        shape[axis] = out
        lam = (src - i0).astype(np.float32).reshape(shape)
        x = jnp.take(x, i0, axis=axis) * (1 - lam) + jnp.take(x, i1, axis=axis) * lam
    return x


class ConvMeanPool(nn.Module):
    """Convolution followed by 2x2 mean pooling (halves H and W)."""

    features: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = ncsn_conv(x, self.features, self.kernel_size)
        return (h[:, ::2, ::2] + h[:, 1::2, ::2] + h[:, ::2, 1::2] + h[:, 1::2, 1::2]) / 4.0


class ResidualBlock(nn.Module):
    """Pre-activation residual block: norm, act, conv, norm, act, conv (+ shortcut); conditional
    (NCSN v1) when called with labels `y`. resample='down' without dilation mean-pools by 2 (pooled
    1x1 shortcut); with dilation > 1 nothing is pooled (dilated 3x3 shortcut)."""

    features: int
    normalization: Any
    act: Callable[[Array], Array]
    resample: Optional[str] = None
    dilation: int = 1

    @nn.compact
    def __call__(self, x: Array, y: Optional[Array] = None) -> Array:
        d = self.dilation
        h = self.act(_normalize(self.normalization, x, y))
        if self.resample == "down":
            h = ncsn_conv(h, x.shape[-1], dilation=d)
            h = self.act(_normalize(self.normalization, h, y))
            if d > 1:
                h = ncsn_conv(h, self.features, dilation=d)
                shortcut = ncsn_conv(x, self.features, dilation=d)
            else:
                h = ConvMeanPool(self.features)(h)
                shortcut = ConvMeanPool(self.features, kernel_size=1)(x)
        elif self.resample is None:
            if self.features == x.shape[-1]:
                shortcut = x
            else:
                shortcut = ncsn_conv(x, self.features, kernel_size=3 if d > 1 else 1, dilation=d)
            h = ncsn_conv(h, self.features, dilation=d)
            h = self.act(_normalize(self.normalization, h, y))
            h = ncsn_conv(h, self.features, dilation=d)
        else:
            raise ValueError(f"resample must be 'down' or None, got {self.resample!r}")
        return shortcut + h


class RCUBlock(nn.Module):
    """Residual conv unit: n_blocks x (n_stages x ([norm,] act, bias-free conv) + residual)."""

    n_blocks: int
    n_stages: int
    act: Callable[[Array], Array]
    normalization: Any = None  # conditional norm (NCSN v1) or None (NCSNv2)

    @nn.compact
    def __call__(self, x: Array, y: Optional[Array] = None) -> Array:
        for _ in range(self.n_blocks):
            residual = x
            for _ in range(self.n_stages):
                if self.normalization is not None:
                    x = _normalize(self.normalization, x, y)
                x = ncsn_conv(self.act(x), x.shape[-1], bias=False)
            x = x + residual
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: ([norm,] conv to `features`, upsample to xs[0]'s size), summed."""

    features: int
    normalization: Any = None

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Optional[Array] = None) -> Array:
        total = None
        for x in xs:
            if self.normalization is not None:
                x = _normalize(self.normalization, x, y)
            h = resize_bilinear_align_corners(ncsn_conv(x, self.features), xs[0].shape[1:3])
            total = h if total is None else total + h
        return total


class CRPBlock(nn.Module):
    """Chained residual pooling: act, then n_stages x ([norm,] 5x5 stride-1 pool, conv), summed;
    max pooling, or (NCSN v1, conditional) average pooling counting the zero padding."""

    n_stages: int
    act: Callable[[Array], Array]
    normalization: Any = None

    @nn.compact
    def __call__(self, x: Array, y: Optional[Array] = None) -> Array:
        x = self.act(x)
        path = x
        for _ in range(self.n_stages):
            if self.normalization is None:
                path = nn.max_pool(path, (5, 5), strides=(1, 1), padding="SAME")
            else:
                path = _normalize(self.normalization, path, y)
                path = nn.avg_pool(path, (5, 5), strides=(1, 1), padding="SAME")
            path = ncsn_conv(path, x.shape[-1], bias=False)
            x = path + x
        return x


class RefineBlock(nn.Module):
    """RefineNet block: an RCU per input, fusion to xs[0]'s resolution, CRP, output RCU(s)."""

    features: int
    act: Callable[[Array], Array]
    normalization: Any = None
    end: bool = False

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Optional[Array] = None) -> Array:
        block = functools.partial(RCUBlock, n_stages=2, act=self.act,
                                  normalization=self.normalization)
        hs = [block(n_blocks=2)(x, y) for x in xs]
        h = MSFBlock(self.features, self.normalization)(hs, y) if len(hs) > 1 else hs[0]
        h = CRPBlock(2, self.act, self.normalization)(h, y)
        return block(n_blocks=3 if self.end else 1)(h, y)


# Backbone stages: (PyTorch name, ((width / nf, resample, dilation), ...)).
_STAGES_64 = (("res1", ((1, None, 1), (1, None, 1))),
              ("res2", ((2, "down", 1), (2, None, 1))),
              ("res3", ((2, "down", 2), (2, None, 2))),
              ("res4", ((2, "down", 4), (2, None, 4))))
_STAGES_128 = (("res1", ((1, None, 1), (1, None, 1))),
               ("res2", ((2, "down", 1), (2, None, 1))),
               ("res3", ((2, "down", 1), (2, None, 1))),
               ("res4", ((4, "down", 2), (4, None, 2))),
               ("res5", ((4, "down", 4), (4, None, 4))))
_STAGES_256 = _STAGES_128[:3] + (("res31", ((2, "down", 1), (2, None, 1))),) + _STAGES_128[3:]


class RefineNet(nn.Module):
    """The NCSN / NCSNv2 RefineNet: x (B, H, W, C) float32, labels (B,) integer noise indices ->
    (B, H, W, C). `train` is accepted and unused (no dropout, no batch statistics)."""

    config: ml_collections.ConfigDict

    stages: ClassVar[tuple] = _STAGES_64
    # Refine blocks in call order: (PyTorch name, width / nf); the k-th fuses the (k+1)-th-last
    # stage output with the previous refine block's output.
    refines: ClassVar[tuple] = (("refine1", 2), ("refine2", 2), ("refine3", 1), ("refine4", 1))
    conditional: ClassVar[bool] = False

    @classmethod
    def downsampling(cls) -> int:
        """Factor by which the backbone reduces H and W."""
        return 2 ** sum(r == "down" and d == 1 for _, blocks in cls.stages for _, r, d in blocks)

    def _check(self, x: Array) -> None:
        cfg, factor, name = self.config, self.downsampling(), self.config.model.name
        if cfg.data.image_size % factor:
            raise ValueError(f"data.image_size={cfg.data.image_size} does not fit {name}: it must "
                             f"be a multiple of {factor}")
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"{name} needs (B, H, W, C) inputs with H and W multiples of {factor}"
                             f" (data.image_size), got shape {x.shape}")
        if x.shape[-1] != cfg.data.num_channels:
            raise ValueError(f"input has {x.shape[-1]} channels, data.num_channels is "
                             f"{cfg.data.num_channels}")
        if compute_dtype(cfg) != jnp.float32:
            raise ValueError(f"model.dtype={cfg.model.dtype!r}: {name} computes in float32 only "
                             "(bfloat16 is supported by ncsnpp and ddpm)")

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
        del train
        self._check(x)
        cfg = self.config
        nf, act = cfg.model.nf, get_act(cfg)
        norm = get_normalization(cfg, conditional=self.conditional)
        labels = jnp.asarray(labels).astype(jnp.int32)
        y = labels if self.conditional else None

        h = x if cfg.data.centered else 2 * x - 1.0
        h = ncsn_conv(h, nf)
        layers = []
        for _, blocks in self.stages:
            for width, resample, dilation in blocks:
                h = ResidualBlock(width * nf, norm, act, resample, dilation)(h, y)
            layers.append(h)
        ref = None
        for k, (_, width) in enumerate(self.refines):
            xs = [layers[-1 - k]] + ([] if ref is None else [ref])
            ref = RefineBlock(width * nf, act, norm if self.conditional else None,
                              end=k == len(self.refines) - 1)(xs, y)
        h = act(_normalize(norm, ref, y))
        h = ncsn_conv(h, cfg.data.num_channels)
        if cfg.model.scale_by_sigma:
            sigmas = jnp.asarray(get_sigmas(cfg), jnp.float32)
            h = h / sigmas[labels][:, None, None, None]
        return h


@register_model(name="ncsnv2_64")
class NCSNv2(RefineNet):
    """NCSNv2 for images up to 64 px (CIFAR-10 32 px, CelebA 64 px); image_size % 2 == 0."""


@register_model(name="ncsnv2_128")
class NCSNv2_128(RefineNet):  # noqa: N801 - official name
    """NCSNv2 for 96-128 px (LSUN 128 px); an extra stage, widths up to 4nf; image_size % 4 == 0."""

    stages = _STAGES_128
    refines = (("refine1", 4), ("refine2", 2), ("refine3", 2), ("refine4", 1), ("refine5", 1))


@register_model(name="ncsnv2_256")
class NCSNv2_256(RefineNet):  # noqa: N801 - official name
    """NCSNv2 for 129-256 px; one more downsampling stage (res31) than 128; image_size % 8 == 0."""

    stages = _STAGES_256
    refines = (("refine1", 4), ("refine2", 2), ("refine31", 2), ("refine3", 2), ("refine4", 1),
               ("refine5", 1))
