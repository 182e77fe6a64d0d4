"""A closed-form score model for Gaussian data, as a Flax module (the samplers' test oracle).

Data ~ N(mu, diag(sd^2)) (per-pixel `mu`, `sd` of shape (H, W, C)) gives the marginals
p_t = N(m(t) mu, m(t)^2 sd^2 + s(t)^2), with m(t), s(t) the SDE's `marginal_prob` mean coefficient
and std. `AnalyticScore` is called like a network, `model.apply(variables, x, labels)`, and through
`get_score_fn(sde, model, variables, continuous=True)` gives the exact score of p_t, as the official
reference model does:

* VE: labels are sigma(t); the output is the score (sigma(t) = s(t), and m = 1).
* VP / sub-VP: labels are 999 t; the output is -score * s(t) (get_score_fn divides by -s(t)).

`variables = analytic_variables(mu, sd)` = `{'params': {'mu': mu, 'sd': sd}}` (arrays (H, W, C)).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from score_jax import sde as sde_lib


def analytic_variables(mu, sd) -> dict:
    return {"params": {"mu": jnp.asarray(mu, jnp.float32), "sd": jnp.asarray(sd, jnp.float32)}}


def marginal_coeffs(sde, t):
    """m(t) and s(t) (shapes of t) of the SDE's perturbation kernel, in t's precision (numpy
    float64 in, float64 out; jax arrays in, jax arrays out)."""
    xp = np if isinstance(t, (np.ndarray, np.floating, float)) else jnp
    if isinstance(sde, sde_lib.VESDE):
        return xp.ones_like(t), sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    lmc = -0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
    m = xp.exp(lmc)
    if isinstance(sde, sde_lib.subVPSDE):
        return m, 1.0 - xp.exp(2.0 * lmc)
    return m, xp.sqrt(1.0 - xp.exp(2.0 * lmc))


class AnalyticScore(nn.Module):
    """Exact score network of Gaussian data for `sde` (see the module docstring)."""

    sde: sde_lib.SDE

    @nn.compact
    def __call__(self, x, labels, train: bool = False):
        mu = self.param("mu", nn.initializers.zeros, x.shape[1:])
        sd = self.param("sd", nn.initializers.ones, x.shape[1:])
        if isinstance(self.sde, sde_lib.VESDE):
            # labels = sigma(t) = s(t); m = 1.
            s = labels
            m = jnp.ones_like(s)
        else:
            m, s = self.sde.marginal_prob(jnp.ones_like(labels), labels / 999.0)
        m = m.reshape((-1,) + (1,) * (x.ndim - 1))
        s = s.reshape((-1,) + (1,) * (x.ndim - 1))
        score = -(x - m * mu) / (m**2 * sd**2 + s**2)
        return score if isinstance(self.sde, sde_lib.VESDE) else -score * s


def flow_map(sde, x, mu, sd, t_from: float, t_to: float) -> np.ndarray:
    """Exact probability-flow map x(t_from) -> x(t_to) (float64):
    m(t_to) mu + sqrt(v(t_to) / v(t_from)) (x - m(t_from) mu), v = m^2 sd^2 + s^2."""
    m0, s0 = marginal_coeffs(sde, np.float64(t_from))
    m1, s1 = marginal_coeffs(sde, np.float64(t_to))
    mu, sd, x = (np.asarray(a, np.float64) for a in (mu, sd, x))
    v0, v1 = m0**2 * sd**2 + s0**2, m1**2 * sd**2 + s1**2
    return m1 * mu + np.sqrt(v1 / v0) * (x - m0 * mu)


def model_bpd(sde, x, mu, sd, eps: float, offset: float = 8.0) -> np.ndarray:
    """Bits/dim the probability-flow likelihood of the analytic model gives `x` (B, ...) at time
    `eps`: -(log prior(z) + log|dz/dx|) / (D log 2) + offset, with z the exact flow of x to T."""
    z = flow_map(sde, x, mu, sd, eps, sde.T)
    m0, s0 = marginal_coeffs(sde, np.float64(eps))
    m1, s1 = marginal_coeffs(sde, np.float64(sde.T))
    sd = np.asarray(sd, np.float64)
    log_det = 0.5 * np.sum(np.log((m1**2 * sd**2 + s1**2) / (m0**2 * sd**2 + s0**2)))
    scale = sde.sigma_max if isinstance(sde, sde_lib.VESDE) else 1.0
    dims = np.prod(x.shape[1:])
    sq = np.sum(z.reshape(z.shape[0], -1) ** 2, axis=1)
    prior = -dims / 2.0 * np.log(2 * np.pi * scale**2) - sq / (2.0 * scale**2)
    return -(prior + log_det) / dims / np.log(2.0) + offset
