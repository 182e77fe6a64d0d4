"""NCSN v1 (Song & Ermon, 2019): the noise-conditional RefineNet, in Flax.

The `ncsnv2_64` architecture (same stages, widths and RefineBlocks, see `ncsnv2`) with every
normalization replaced by ConditionalInstanceNorm++ whose gamma/alpha/beta are rows of an embedding
of the integer noise index (`model.num_scales` classes), normalizations also inside the RefineNet
blocks (before each RCU conv, each fusion conv and each pooling stage), and 5x5 *average* pooling
(zero padding counted) in the chained residual pooling. Labels are integer noise indices (discrete
VE training). The output is the score itself: it is divided by `sigmas[labels]` only when
`model.scale_by_sigma` (False in every official NCSN config, as in the original NCSN).

The official code cannot run these configs: PyTorch `NCSN` builds its conditional residual blocks
with the default `dilation=None` and crashes on `None > 1`; past that, it would build its
conditional layers from the unconditional `InstanceNorm2dPlus` that `get_normalization(config)`
returns (`InstanceNorm2dPlus(C, num_classes, bias=True)`: a TypeError), and it reads
`data.channels`, which the configs do not set. The official JAX `NCSN` reads `model.num_classes`
(absent from the configs) and mis-calls its normalization in down-sampling blocks. Ours builds the
network the official code describes: ConditionalInstanceNorm++ over `model.num_scales` classes,
dilation 1 unless stated, 'SAME' padding, channels from `data.num_channels`.

Parameters: `Conv_0`, `ResidualBlock_i`, `RefineBlock_i`, `ConditionalInstanceNorm2dPlus_0`,
`Conv_1`, each conditional norm holding `Embed_0/embedding` (num_scales, 3C) = PyTorch
`embed.weight` (`score_jax.convert.ncsnv2.torch_to_flax` maps the fixed official module's state
dict: `normalize1.embed.weight`, `adapt_convs.0.1_1_norm.embed.weight`, `msf.norms.0...`).
"""
from __future__ import annotations

from score_jax.models import register_model
from score_jax.models.ncsnv2 import RefineNet

__all__ = ["NCSN"]


@register_model(name="ncsn")
class NCSN(RefineNet):
    """NCSN v1 for images up to 64 px; image_size % 2 == 0. See the module docstring."""

    conditional = True
