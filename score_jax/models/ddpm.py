"""The DDPM U-Net of Ho et al. (2020), registered as `ddpm`.

`model.apply(variables, x, labels, train=...)`: x (B, H, W, C) float32, labels (B,) time labels
(DDPM index t (N-1), or 999 t), sinusoidally embedded; output shaped like x. GroupNorms have 32
groups (`nf * ch_mult[i]` a multiple of 32). `attn_every_up_block` (default False): attention
after every up-path block (Ho et al., diffusers) instead of once per level. `scale_by_sigma`
divides by `sigmas[int(label)]`; `conditional=False` builds no time embedding (no `Dense_*`)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from score_jax.models import layers, register_model


@register_model(name="ddpm")
class DDPM(layers.UNet):
    """DDPM score network; output has the shape of `x`."""

    @nn.compact
    def __call__(self, x, labels, train: bool = False):
        config = self.config
        m = config.model
        act, nf, ch_mult, num_res_blocks, attn_resolutions = self.hparams()
        attn_every_up_block = bool(m.get("attn_every_up_block", False))
        num_resolutions = len(ch_mult)
        if str(m.normalization).lower() != "groupnorm":
            raise ValueError(f"model.normalization={m.normalization!r} is unknown; "
                             "valid: GroupNorm")
        layers.check_resolutions(config, x)
        bad = [nf * c for c in ch_mult if (nf * c) % 32]
        if bad:
            raise ValueError(f"model.nf * model.ch_mult = {bad} channels: DDPM's GroupNorm(32) "
                             "needs multiples of 32")

        dtype = layers.compute_dtype(config)
        if m.conditional:
            temb = layers.time_mlp(layers.get_timestep_embedding(labels, nf), nf, act, dtype)
        else:
            temb = None

        ResnetBlock = functools.partial(layers.ResnetBlockDDPM, act=act, dropout=m.dropout)
        h = (2 * x - 1.0 if layers.centers_input(config) else x).astype(dtype)

        hs = [layers.conv3x3(h, nf)]
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in attn_resolutions:
                    h = layers.AttnBlock()(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                hs.append(layers.Downsample(with_conv=m.resamp_with_conv)(hs[-1]))

        h = hs[-1]
        h = ResnetBlock()(h, temb, train)
        h = layers.AttnBlock()(h)
        h = ResnetBlock()(h, temb, train)

        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                if attn_every_up_block and h.shape[1] in attn_resolutions:
                    h = layers.AttnBlock()(h)
            if not attn_every_up_block and h.shape[1] in attn_resolutions:
                h = layers.AttnBlock()(h)
            if i_level != 0:
                h = layers.Upsample(with_conv=m.resamp_with_conv)(h)

        h = act(layers.group_norm(32)(h))
        h = layers.conv3x3(h, x.shape[-1], init_scale=0.0).astype(jnp.float32)
        if m.scale_by_sigma:
            sigmas = jnp.asarray(layers.get_sigmas(config), jnp.float32)
            h = h / sigmas[labels.astype(jnp.int32)].reshape((-1, 1, 1, 1))
        return h
