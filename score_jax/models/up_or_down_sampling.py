"""FIR up- and down-sampling of NHWC images (StyleGAN2's `upfirdn2d`) for NCSN++: zeros inserted
after each sample, a true (flipped-kernel) convolution; pure jax, jit- and grad-compatible.
`Conv2d` is the FIR convolution module, plain or fused with resampling."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Sequence[float]) -> np.ndarray:
    """The normalised 2-D FIR kernel (float32, sums to 1); a 1-D `k` is made separable."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
    return k / np.sum(k)


def upfirdn2d(x: jax.Array, k: np.ndarray, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> jax.Array:
    """Upsample (zero insertion), pad, FIR-filter and downsample `x` (N, H, W, C); per axis
    (H * up + pad[0] + pad[1] - len(k)) // down + 1 outputs; negative pads crop."""
    n, h, w, c = x.shape
    kh, kw = k.shape
    p0, p1 = pad
    # Zero insertion and padding in one `lax.pad` (interior padding up - 1), then the filter as a
    # weighted sum of len(k)^2 shifted, strided views: one elementwise fusion, where a depthwise
    # convolution (feature_group_count=C) is several times slower than the real convolutions on
    # XLA:CPU.
    spatial = (p0, p1 + up - 1, up - 1)  # zeros after every sample, the last one included
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), spatial, spatial, (0, 0, 0)])
    out_h = (h * up + p0 + p1 - kh) // down + 1
    out_w = (w * up + p0 + p1 - kw) // down + 1
    flipped = np.asarray(k, np.float64)[::-1, ::-1]
    taps = [lax.slice(x, (0, i, j, 0),
                      (n, i + down * (out_h - 1) + 1, j + down * (out_w - 1) + 1, c),
                      (1, down, down, 1)) * jnp.asarray(flipped[i, j], x.dtype)
            for i in range(kh) for j in range(kw)]
    return sum(taps[1:], taps[0])


def upsample_2d(x: jax.Array, k: Optional[Sequence[float]] = None, factor: int = 2,
                gain: float = 1.0) -> jax.Array:
    """(N, H, W, C) -> (N, H*factor, W*factor, C), filtered with `k` (default: nearest)."""
    k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: jax.Array, k: Optional[Sequence[float]] = None, factor: int = 2,
                  gain: float = 1.0) -> jax.Array:
    """(N, H, W, C) -> (N, H/factor, W/factor, C), filtered with `k` (default: average pool)."""
    k = setup_kernel([1] * factor if k is None else k) * gain
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: jax.Array, w: jax.Array, k: Optional[Sequence[float]] = None,
                     factor: int = 2, gain: float = 1.0) -> jax.Array:
    """Fused `upsample_2d` + 'SAME' convolution with `w` (kh, kw, in, out): (N, H*f, W*f, out)."""
    conv_h, conv_w, in_c, _ = w.shape
    if conv_h != conv_w:
        raise ValueError(f"upsample_conv_2d needs a square kernel, got {w.shape}")
    if x.shape[-1] != in_c:
        raise ValueError(f"input has {x.shape[-1]} channels, the kernel expects {in_c}")
    k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
    p = (k.shape[0] - factor) - (conv_w - 1)
    # StyleGAN2's order: stride-`factor` transposed convolution, then the FIR filter, padded once.
    x = lax.conv_general_dilated(x, w, window_strides=(1, 1),
                                 padding=((conv_h - 1, conv_h - 1), (conv_w - 1, conv_w - 1)),
                                 lhs_dilation=(factor, factor), dimension_numbers=_DIMS)
    return upfirdn2d(x, k, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: jax.Array, w: jax.Array, k: Optional[Sequence[float]] = None,
                       factor: int = 2, gain: float = 1.0) -> jax.Array:
    """Fused FIR filter + stride-f convolution with `w` (kh, kw, in, out): (N, H/f, W/f, out)."""
    conv_h, conv_w, _, _ = w.shape
    if conv_h != conv_w:
        raise ValueError(f"conv_downsample_2d needs a square kernel, got {w.shape}")
    k = setup_kernel([1] * factor if k is None else k) * gain
    p = (k.shape[0] - factor) + (conv_w - 1)
    x = upfirdn2d(x, k, pad=((p + 1) // 2, p // 2))
    return lax.conv_general_dilated(x, w, window_strides=(factor, factor), padding="VALID",
                                    dimension_numbers=_DIMS)


def naive_upsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling (N, H, W, C) -> (N, H*f, W*f, C)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
    """Average pooling over factor x factor blocks (N, H, W, C) -> (N, H/f, W/f, C)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class Conv2d(nn.Module):
    """Convolution with optional fused FIR resampling; `weight` (k, k, in, out), `bias` (out,)."""

    fmaps: int
    kernel: int
    up: bool = False
    down: bool = False
    resample_kernel: Sequence[int] = (1, 3, 3, 1)
    use_bias: bool = True
    kernel_init: Optional[Callable[..., Any]] = None

    @nn.compact
    def __call__(self, x):
        if self.up and self.down:
            raise ValueError("Conv2d: up and down are exclusive")
        if self.kernel < 1 or self.kernel % 2 != 1:
            raise ValueError(f"Conv2d: kernel must be odd and >= 1, got {self.kernel}")
        init = self.kernel_init or nn.initializers.lecun_normal()
        w = self.param("weight", init, (self.kernel, self.kernel, x.shape[-1], self.fmaps))
        w = w.astype(x.dtype)
        if self.up:
            x = upsample_conv_2d(x, w, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, w, k=self.resample_kernel)
        else:
            x = lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME",
                                         dimension_numbers=_DIMS)
        if self.use_bias:
            x = x + self.param("bias", nn.initializers.zeros, (self.fmaps,)).astype(x.dtype)
        return x
