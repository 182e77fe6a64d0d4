"""Exact likelihood through the probability-flow ODE (Song et al. 2021, Sec. 4.3) and the
variational bound of Song, Durkan, Murray, Ermon (2021). Data are dequantized and scaled by the
input pipeline; bits/dim add the bin offset `7 - inverse_scaler(-1.)`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import losses, ode, sampling
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

HUTCHINSON_TYPES = ("Rademacher", "Gaussian")


def hutchinson_noise(rng, shape, hutchinson_type: str) -> jax.Array:
    """Standard normal or +-1 (float32)."""
    if hutchinson_type == "Gaussian":
        return jax.random.normal(rng, shape)
    if hutchinson_type == "Rademacher":
        return jax.random.rademacher(rng, shape, jnp.float32)
    raise ValueError(
        f"unknown hutchinson_type {hutchinson_type!r}; valid: {list(HUTCHINSON_TYPES)}")


def _per_example_sum(v):
    return jnp.sum(v.reshape(v.shape[0], -1), axis=1)


def hutchinson_divergence(fn, x, noise):
    """`(fn(x), noise^T J_fn(x) noise)` per example, from a single `jax.jvp`."""
    out, jvp = jax.jvp(fn, (x,), (noise,))
    return out, _per_example_sum(jvp * noise)


def exact_divergence(fn, x):
    """`(fn(x), trace J_fn(x))` per example, one jvp per dimension (`fn` per-example)."""
    dims = int(np.prod(x.shape[1:]))
    basis = jnp.eye(dims, dtype=x.dtype).reshape((dims, 1) + x.shape[1:])
    out, lin = jax.linearize(fn, x)
    diag = jax.vmap(lambda e: _per_example_sum(lin(jnp.broadcast_to(e, x.shape)) * e))(basis)
    return out, jnp.sum(diag, axis=0)


def bits_per_dim(sde, z, delta_logp, inverse_scaler):
    """Bits/dim: -(log p_T(z) + delta_logp) / (D log 2) + 7 - inverse_scaler(-1)."""
    dims = np.prod(z.shape[1:])
    bpd = -(sde.prior_logp(z) + delta_logp) / np.log(2.0) / dims
    return bpd + (7.0 - inverse_scaler(-1.0))


def get_likelihood_fn(sde, model, inverse_scaler, hutchinson_type="Rademacher", rtol=1e-5,
                      atol=1e-5, method="dopri5", eps=1e-5, exact_trace=False, continuous=True,
                      fixed_nfe: int | None = None, pcoeff: float = 0.0, icoeff: float = 1.0,
                      variable: str = "t"):
    """A jitted `(rng, variables, data (B, H, W, C), eps_noise=None) -> (bpd (B,), z = x(T), nfe)`:
    the ODE of `ode.probability_flow(variable)` solved from eps to T (`ode.solve_ode`) with one
    Hutchinson probe per call (`eps_noise`, or drawn from `rng`), or `exact_trace`."""
    if hutchinson_type not in HUTCHINSON_TYPES:
        raise ValueError(
            f"unknown hutchinson_type {hutchinson_type!r}; valid: {list(HUTCHINSON_TYPES)}")
    if method not in ode.ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; valid: {list(ode.ODE_METHODS)}")
    ode.check_variable(variable)

    def likelihood_fn(rng, variables, data, eps_noise=None):
        data = jnp.asarray(data, jnp.float32)
        score_fn = mutils.get_score_fn(sde, model, variables, train=False, continuous=continuous)
        sampling.check_model_shape(score_fn, data.shape)
        flow = ode.probability_flow(sde, score_fn, variable)
        if eps_noise is None:
            eps_noise = hutchinson_noise(rng, data.shape, hutchinson_type)
        elif eps_noise.shape != data.shape:
            raise ValueError(f"eps_noise has shape {eps_noise.shape}, data {data.shape}")

        def ode_fn(s, state):
            y, _ = state
            fn = lambda v: flow.drift(s, v)
            if exact_trace:
                return exact_divergence(fn, y)
            return hutchinson_divergence(fn, y, eps_noise)

        # x = scale y: log p_x(x) = log p_y(y) - D log scale at both ends.
        batch, dims = data.shape[0], int(np.prod(data.shape[1:]))
        scale_0, scale_T = (flow.scale(jnp.full((batch,), t, jnp.float32)) for t in (eps, sde.T))
        init = (sde_lib.batch_mul(1.0 / scale_0, data), jnp.zeros((batch,), jnp.float32))
        (y, delta_logp), nfe = ode.solve_ode(ode_fn, init, flow.s_of_t(eps), flow.s_of_t(sde.T),
                                             method=method, rtol=rtol, atol=atol,
                                             fixed_nfe=fixed_nfe, pcoeff=pcoeff, icoeff=icoeff)
        z = sde_lib.batch_mul(scale_T, y)
        delta_logp = delta_logp + dims * (jnp.log(scale_T) - jnp.log(scale_0))
        return bits_per_dim(sde, z, delta_logp, inverse_scaler), z, nfe

    return jax.jit(likelihood_fn)


def _prior_inverse_variance(sde, shape) -> jax.Array:
    """1/c^2 of the prior N(0, c^2 I): log p(0) - log p(e_1) = 1/(2 c^2)."""
    zero = jnp.zeros((1,) + tuple(shape), jnp.float32)
    e1 = zero.reshape(1, -1).at[0, 0].set(1.0).reshape(zero.shape)
    return 2.0 * (sde.prior_logp(zero)[0] - sde.prior_logp(e1)[0])


def get_elbo_fn(sde, model, inverse_scaler, eps=1e-5, num_t: int = 16, continuous=True):
    """A jitted `(rng, variables, data) -> (bpd_bound (B,), nfe = num_t)`: the variational bound
    on bits/dim (README "The bound and variational dequantization"), t importance-sampled,
    `num_t` stratified draws per example."""
    # -log p(x_0) <= E[-log pi(x_T)] + Z/2 E_{t~q,z}[|std s(x_t, t) + z|^2 - D] - D log alpha_T,
    # q = g^2/std^2 / Z on [eps, T]; the last term holds the decoder N(x_eps/alpha, (std/alpha)^2).
    losses.check_importance_sampling(sde)
    if int(num_t) < 1:
        raise ValueError(f"num_t must be >= 1 (eval.bound_num_t), got {num_t}")

    def elbo_fn(rng, variables, data):
        data = jnp.asarray(data, jnp.float32)
        score_fn = mutils.get_score_fn(sde, model, variables, train=False, continuous=continuous)
        sampling.check_model_shape(score_fn, data.shape)
        nll = elbo_nats(sde, score_fn, rng, data, num_t, eps)
        dims = int(np.prod(data.shape[1:]))
        return nll / np.log(2.0) / dims + (7.0 - inverse_scaler(-1.0)), jnp.int32(num_t)

    return jax.jit(elbo_fn)


def elbo_nats(sde, score_fn, rng, data, num_t: int = 1, eps: float = 1e-5) -> jax.Array:
    """The bound of `get_elbo_fn` in nats (batch,); differentiable in `data` and the score."""
    normalizer = losses.likelihood_importance_normalizer(sde, eps)
    batch, dims = data.shape[0], int(np.prod(data.shape[1:]))
    u_rng, z_rng = jax.random.split(rng)
    offsets = jax.random.uniform(u_rng, (batch,))

    def dsm(k):
        u = (k + offsets) / num_t
        t = losses.importance_sampled_time(sde, u, eps)
        z = jax.random.normal(jax.random.fold_in(z_rng, k), data.shape)
        mean, std = sde.marginal_prob(data, t)
        score = score_fn(mean + sde_lib.batch_mul(std, z), t)
        # |z|^2 stands for its mean D: the same expectation, and it cancels the draw's noise
        # where the score is good (|std s + z|^2 - |z|^2 -> 0 as t -> 0).
        return _per_example_sum(jnp.square(sde_lib.batch_mul(std, score) + z) - jnp.square(z))

    if num_t == 1:
        excess = dsm(0)
    else:
        excess = jnp.mean(jax.lax.map(dsm, jnp.arange(num_t)), axis=0)
    t_end = jnp.full((batch,), sde.T, jnp.float32)
    mean_T, std_T = sde.marginal_prob(data, t_end)
    prior = -sde.prior_logp(mean_T) + 0.5 * dims * std_T**2 * _prior_inverse_variance(
        sde, data.shape[1:])
    return prior + 0.5 * normalizer * excess - dims * jnp.log(sde.alpha(t_end))
