"""NCSN++ and DDPM++ (Song et al., 2021): one U-Net configured by `config.model`, as `ncsnpp`.

`model.apply(variables, x, labels, train=...)`: x (B, H, W, C) float32; labels (B,) are sigma(t)
for the `fourier` embedding (embedded as log sigma), a time / noise-index label for `positional`;
output float32 shaped like x. Flags are those of score_sde's configs (`conv_size` 3 only), plus
`dtype` ('float32' | 'bfloat16': the layers' compute dtype; embedding, normalisation statistics,
softmax and output scaling stay float32) and `center_input`. `scale_by_sigma` divides by the
label (fourier) or `sigmas[int(label)]` (positional). Fourier with `training.continuous=False`
raises ValueError (integer labels have no logarithm)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from score_jax.models import layers, layerspp, register_model

_CHOICES = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
    "normalization": ("groupnorm",),
}


def _flag(config, name: str) -> str:
    value = str(config.model[name]).lower()
    if value not in _CHOICES[name]:
        raise ValueError(f"model.{name}={config.model[name]!r} is unknown; "
                         f"valid: {', '.join(_CHOICES[name])}")
    return value


@register_model(name="ncsnpp")
class NCSNpp(layers.UNet):
    """NCSN++ / DDPM++ score network; output has the shape of `x`."""

    @nn.compact
    def __call__(self, x, time_cond, train: bool = False):
        config, m = self.config, self.config.model
        act, nf, ch_mult, num_res_blocks, attn_resolutions = self.hparams()
        num_resolutions = len(ch_mult)
        resblock_type = _flag(config, "resblock_type")
        progressive = _flag(config, "progressive")
        progressive_input = _flag(config, "progressive_input")
        combine_method = _flag(config, "progressive_combine")
        embedding_type = _flag(config, "embedding_type")
        _flag(config, "normalization")
        if m.get("conv_size", 3) != 3:
            raise ValueError(f"model.conv_size={m.conv_size} is not supported (only 3, as the "
                             "official code)")
        layers.check_resolutions(config, x)
        fir, fir_kernel = m.fir, tuple(m.fir_kernel)
        skip_rescale, init_scale = m.skip_rescale, m.init_scale

        if embedding_type == "fourier":
            if not config.training.get("continuous", True):
                raise ValueError("model.embedding_type='fourier' needs training.continuous=True "
                                 "(labels are noise levels, embedded as log sigma)")
            used_sigmas = time_cond
            temb = layerspp.GaussianFourierProjection(embedding_size=nf, scale=m.fourier_scale)(
                jnp.log(time_cond))
        else:
            sigmas = jnp.asarray(layers.get_sigmas(config), jnp.float32)
            used_sigmas = sigmas[time_cond.astype(jnp.int32)]
            temb = layers.get_timestep_embedding(time_cond, nf)

        dtype = layers.compute_dtype(config)
        if m.conditional:
            temb = layers.time_mlp(temb, nf, act, dtype)
        else:
            temb = None

        AttnBlock = functools.partial(layerspp.AttnBlockpp, init_scale=init_scale,
                                      skip_rescale=skip_rescale)
        Upsample = functools.partial(layerspp.Upsample, with_conv=m.resamp_with_conv, fir=fir,
                                     fir_kernel=fir_kernel)
        Downsample = functools.partial(layerspp.Downsample, with_conv=m.resamp_with_conv, fir=fir,
                                       fir_kernel=fir_kernel)
        # The pyramids resample with a convolution only in 'residual' mode.
        pyramid_upsample = functools.partial(layerspp.Upsample, fir=fir, fir_kernel=fir_kernel,
                                             with_conv=progressive == "residual")
        pyramid_downsample = functools.partial(layerspp.Downsample, fir=fir, fir_kernel=fir_kernel,
                                               with_conv=progressive_input == "residual")
        if resblock_type == "ddpm":
            ResnetBlock = functools.partial(layerspp.ResnetBlockDDPMpp, act=act, dropout=m.dropout,
                                            init_scale=init_scale, skip_rescale=skip_rescale)
        else:
            ResnetBlock = functools.partial(layerspp.ResnetBlockBigGANpp, act=act,
                                            dropout=m.dropout, fir=fir, fir_kernel=fir_kernel,
                                            init_scale=init_scale, skip_rescale=skip_rescale)

        def combine(a, b):
            return layerspp.skip_sum(a, b, skip_rescale)

        if layers.centers_input(config):
            x = 2 * x - 1.0
        x = x.astype(dtype)  # every layer computes in its input's dtype

        # Downsampling path.
        input_pyramid = x if progressive_input != "none" else None
        hs = [layers.conv3x3(x, nf)]
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in attn_resolutions:
                    h = AttnBlock()(h)
                hs.append(h)

            if i_level != num_resolutions - 1:
                if resblock_type == "ddpm":
                    h = Downsample()(hs[-1])
                else:
                    h = ResnetBlock(down=True)(hs[-1], temb, train)

                if progressive_input == "input_skip":
                    input_pyramid = pyramid_downsample()(input_pyramid)
                    h = layerspp.Combine(method=combine_method)(input_pyramid, h)
                elif progressive_input == "residual":
                    input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
                    input_pyramid = combine(input_pyramid, h)
                    h = input_pyramid
                hs.append(h)

        h = hs[-1]
        h = ResnetBlock()(h, temb, train)
        h = AttnBlock()(h)
        h = ResnetBlock()(h, temb, train)

        # Upsampling path.
        pyramid = None
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)

            if h.shape[1] in attn_resolutions:
                h = AttnBlock()(h)

            if progressive != "none":
                if i_level == num_resolutions - 1:
                    if progressive == "output_skip":
                        pyramid = layers.conv3x3(act(layerspp.group_norm(h.shape[-1])(h)),
                                                 x.shape[-1], init_scale=init_scale)
                    else:
                        pyramid = layers.conv3x3(act(layerspp.group_norm(h.shape[-1])(h)),
                                                 h.shape[-1])
                elif progressive == "output_skip":
                    pyramid = pyramid_upsample()(pyramid)
                    pyramid = pyramid + layers.conv3x3(
                        act(layerspp.group_norm(h.shape[-1])(h)), x.shape[-1],
                        init_scale=init_scale)
                else:
                    pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
                    pyramid = combine(pyramid, h)
                    h = pyramid

            if i_level != 0:
                if resblock_type == "ddpm":
                    h = Upsample()(h)
                else:
                    h = ResnetBlock(up=True)(h, temb, train)

        if progressive == "output_skip":
            h = pyramid
        else:
            h = act(layerspp.group_norm(h.shape[-1])(h))
            h = layers.conv3x3(h, x.shape[-1], init_scale=init_scale)

        h = h.astype(jnp.float32)
        if m.scale_by_sigma:
            h = h / used_sigmas.reshape((-1, 1, 1, 1))
        return h
