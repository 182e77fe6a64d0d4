"""Closed-form test problems of the few-step benchmarks (float64): Gaussian data and Gaussian
mixtures in a few dimensions, whose score is exact, with latents and the exact (Gaussian) or
dopri5 (rtol = atol = 1e-9) probability-flow solution at eps.

    prob = problem("vp", "narrow", seed=0, n=1024)
    prob.score(x, t)            # exact score, x (B, D), t (B,)
    prob.z, prob.ref            # latents at T and the flow's x at eps
    prob.error(y)               # relative RMS error to prob.ref
    prob.switch_rate(y)         # fraction of samples in another component than the reference's

Data: 'gaussian' (per-dimension N(mu, sd^2), sd in 0.1-1), 'wide' (6 components, stds 0.3-0.6),
'narrow' (6 components, stds 0.05-0.3), means uniform in [-0.8, 0.8]^D, Dirichlet(3) weights;
the same draws as tests/test_solvers.py for seed 0 and D = 4.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import ode
from score_jax import sde as sde_lib

SDES = {"ve": sde_lib.VESDE, "vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE}
DATA = ("gaussian", "wide", "narrow")


def mixture_logits(sde, means, stds, weights, x, t):
    """log w_k N(x; alpha m_k, (alpha^2 s_k^2 + sigma^2) I) + const, (B, K), and the pieces."""
    a, s = sde.alpha(t)[:, None, None], sde.sigma(t)[:, None, None]
    var = a**2 * stds[None, :, None] ** 2 + s**2
    diff = x[:, None, :] - a * means[None]
    logp = (jnp.log(weights)[None] - 0.5 * x.shape[1] * jnp.log(var[..., 0])
            - 0.5 * jnp.sum(diff**2, -1) / var[..., 0])
    return logp, diff, var


@dataclasses.dataclass
class Problem:
    sde: object
    eps: float
    z: np.ndarray
    ref: np.ndarray
    score: object
    means: np.ndarray | None = None
    stds: np.ndarray | None = None
    weights: np.ndarray | None = None

    def error(self, y) -> float:
        y = np.asarray(y, np.float64)
        return float(np.sqrt(np.mean((y - self.ref) ** 2) / np.mean(self.ref**2)))

    def component(self, y) -> np.ndarray | None:
        if self.means is None:
            return None
        with jax.enable_x64(True):
            y = jnp.asarray(y, jnp.float64)
            logp, _, _ = mixture_logits(self.sde, *map(jnp.asarray, (self.means, self.stds,
                                                                     self.weights)), y,
                                        jnp.full((y.shape[0],), self.eps))
            return np.asarray(jnp.argmax(logp, 1))

    def switch_rate(self, y) -> float:
        """Fraction of samples whose most likely component differs from the reference's (0 for
        Gaussian data)."""
        if self.means is None:
            return 0.0
        return float(np.mean(self.component(y) != self.component(self.ref)))


@functools.lru_cache(maxsize=None)
def problem(sde_name: str, data: str, seed: int = 0, n: int = 1024, dim: int = 4,
            latent_seed: int = 0) -> Problem:
    sde = SDES[sde_name]()
    eps = sde.sampling_eps
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        z = np.asarray(sde.prior_sampling(jax.random.key(latent_seed), (n, dim)), np.float64)
        if data == "gaussian":
            mu, sd = rng.normal(size=dim) * 0.5, np.exp(rng.uniform(np.log(0.1), 0.0, dim))
            mu_j, sd_j = jnp.asarray(mu), jnp.asarray(sd)

            def score(x, t):
                a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
                return -(x - a * mu_j) / (a**2 * sd_j**2 + s**2)

            a0, s0, a1, s1 = (float(f(jnp.float64(t))) for t in (sde.T, eps)
                              for f in (sde.alpha, sde.sigma))
            v0, v1 = a0**2 * sd**2 + s0**2, a1**2 * sd**2 + s1**2
            ref = a1 * mu + np.sqrt(v1 / v0) * (z - a0 * mu)
            return Problem(sde, eps, z, ref, score)
        means = rng.uniform(-0.8, 0.8, (6, dim))
        lo, hi = (0.05, 0.3) if data == "narrow" else (0.3, 0.6)
        stds = np.exp(rng.uniform(np.log(lo), np.log(hi), 6))
        weights = rng.dirichlet([3.0] * 6)
        params = tuple(map(jnp.asarray, (means, stds, weights)))

        def score(x, t):
            logp, diff, var = mixture_logits(sde, *params, x, t)
            return jnp.sum(jax.nn.softmax(logp, axis=1)[..., None] * -diff / var, axis=1)

        drift = ode.probability_flow_drift(sde, score)
        ref = np.asarray(jax.jit(lambda z: ode.solve_ode(
            drift, z, sde.T, eps, rtol=1e-9, atol=1e-9, max_steps=20000)[0])(z))
        return Problem(sde, eps, z, ref, score, means, stds, weights)
