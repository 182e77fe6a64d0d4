"""NCSN v1 (Song & Ermon, 2019), registered as `ncsn`: images up to 64 px, of even size."""
from __future__ import annotations

from score_jax.models import register_model
from score_jax.models.ncsnv2 import RefineNet

__all__ = ["NCSN"]


@register_model(name="ncsn")
class NCSN(RefineNet):
    # The `ncsnv2_64` architecture with ConditionalInstanceNorm++ over `model.num_scales` classes
    # everywhere (also inside the RefineNet blocks) and 5x5 average pooling (zero padding counted)
    # in the chained residual pooling. Labels are integer noise indices; the output is the score,
    # divided by `sigmas[labels]` only with `model.scale_by_sigma`.
    conditional = True
