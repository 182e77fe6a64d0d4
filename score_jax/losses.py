"""Training objectives of Song et al. (2021) and the one-step update. Each `get_*_loss_fn` returns
`(draw_noise, loss_fn)`: `draw_noise(rng, x) -> {'u' or 'labels': (B,), 'z': x.shape}` and
`loss_fn(params, x, rng, noise=None) -> scalar`, which takes injected draws (parity tests).
With x_t = mean(t) x_0 + std(t) z: continuous |std score + z|^2, or |score + z/std|^2 g^2 with
`likelihood_weighting`; SMLD |score + z/sigma|^2 sigma^2; DDPM |eps_theta(x_i, i) - z|^2; each
reduced over the data dimensions, then averaged over the batch."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_jax import sde as sde_lib
from score_jax.models import utils as mutils
from score_jax.train_state import apply_update

PyTree = Any


def _reduce_op(reduce_mean: bool):
    """Per-example mean, or half sum, over the data dimensions."""
    if reduce_mean:
        return lambda v: jnp.mean(v.reshape(v.shape[0], -1), axis=-1)
    return lambda v: 0.5 * jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def _variables(params):
    return {"params": params}


def likelihood_importance_normalizer(sde, eps: float = 1e-5) -> float:
    """Z = int_eps^T g(t)^2 / std(t)^2 dt = 2 (lambda(eps) - lambda(T)), lambda the half log-SNR."""
    # g^2 = d std^2/dt - 2 std^2 d log(alpha)/dt for all three SDEs, so g^2/std^2 = -2 dlambda/dt.
    check_importance_sampling(sde)
    with jax.ensure_compile_time_eval():  # a constant, also when called under jit
        lam = np.asarray(sde.log_snr(np.asarray([eps, sde.T], np.float64)), np.float64)
    return float(2.0 * (lam[0] - lam[1]))


def check_importance_sampling(sde) -> None:
    """Raises ValueError unless `sde` has the closed-form log-SNR and inverse the sampler needs."""
    if (type(sde).log_snr is sde_lib.SDE.log_snr
            or type(sde).t_from_log_snr is sde_lib.SDE.t_from_log_snr):
        raise ValueError(
            f"training.importance_weighting needs an SDE with a closed-form log-SNR and its "
            f"inverse (log_snr, t_from_log_snr); {type(sde).__name__} has none")


def importance_sampled_time(sde, u, eps: float = 1e-5):
    """t on [eps, T] with density g(t)^2/std(t)^2 / Z from uniforms `u` in [0, 1) (shape kept)."""
    # Inverse CDF: the density is uniform in lambda.
    lam_eps, lam_T = sde.log_snr(jnp.float32(eps)), sde.log_snr(jnp.float32(sde.T))
    t = sde.t_from_log_snr(lam_eps - u * (lam_eps - lam_T))
    return jnp.clip(t, eps, sde.T)


def get_sde_loss_fn(sde, model, train: bool, reduce_mean: bool = True, continuous: bool = True,
                    likelihood_weighting: bool = True, eps: float = 1e-5,
                    importance_weighting: bool = False):
    """Denoising score matching, t ~ U(eps, T) or, with `importance_weighting`, g^2/std^2 / Z;
    x: (B, H, W, C) scaled data; `rng` drives the draws (unless `noise`) and dropout."""
    reduce_op = _reduce_op(reduce_mean)
    if importance_weighting:
        if not likelihood_weighting:
            raise ValueError("training.importance_weighting=True samples t for the likelihood-"
                             "weighted loss: it needs training.likelihood_weighting=True")
        # Same expectation as the uniform-t likelihood-weighted loss.
        is_weight = likelihood_importance_normalizer(sde, eps) / (sde.T - eps)

    def draw_noise(rng, x):
        u_rng, z_rng = jax.random.split(rng)
        return {"u": jax.random.uniform(u_rng, (x.shape[0],), x.dtype),
                "z": jax.random.normal(z_rng, x.shape, x.dtype)}

    def loss_fn(params, x, rng, noise=None):
        noise_rng, dropout_rng = jax.random.split(rng)
        noise = draw_noise(noise_rng, x) if noise is None else noise
        if importance_weighting:
            t = importance_sampled_time(sde, noise["u"], eps)
        else:
            t = noise["u"] * (sde.T - eps) + eps
        z = noise["z"]
        score_fn = mutils.get_score_fn(sde, model, _variables(params), train=train,
                                       continuous=continuous, rng=dropout_rng)
        mean, std = sde.marginal_prob(x, t)
        score = score_fn(mean + sde_lib.batch_mul(std, z), t)
        if importance_weighting:
            # g^2 / q(t) = std^2 Z: |score + z/std|^2 g^2 / q(t) = |std score + z|^2 Z.
            losses = reduce_op(jnp.square(sde_lib.batch_mul(std, score) + z)) * is_weight
        elif likelihood_weighting:
            g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2
            losses = reduce_op(jnp.square(score + sde_lib.batch_mul(1.0 / std, z))) * g2
        else:  # the paper's weighting lambda(t) = std^2
            losses = reduce_op(jnp.square(sde_lib.batch_mul(std, score) + z))
        return jnp.mean(losses)

    return draw_noise, loss_fn


def _draw_labels_and_z(n_levels: int):
    def draw_noise(rng, x):
        label_rng, z_rng = jax.random.split(rng)
        return {"labels": jax.random.randint(label_rng, (x.shape[0],), 0, n_levels),
                "z": jax.random.normal(z_rng, x.shape, x.dtype)}

    return draw_noise


def get_smld_loss_fn(vesde, model, train: bool, reduce_mean: bool = False):
    """The NCSN objective on the N noise levels of a VE SDE; label 0 is sigma_max."""
    if vesde.discrete_loss != "smld":
        raise ValueError("SMLD training only works for VESDEs.")
    smld_sigmas = jnp.asarray(vesde.discrete_sigmas[::-1].copy())
    reduce_op = _reduce_op(reduce_mean)
    draw_noise = _draw_labels_and_z(vesde.N)

    def loss_fn(params, x, rng, noise=None):
        noise_rng, dropout_rng = jax.random.split(rng)
        noise = draw_noise(noise_rng, x) if noise is None else noise
        labels = noise["labels"]
        sigmas = smld_sigmas[labels]
        scaled_noise = sde_lib.batch_mul(sigmas, noise["z"])
        model_fn = mutils.get_model_fn(model, _variables(params), train=train, rng=dropout_rng)
        score = model_fn(x + scaled_noise, labels)
        target = -sde_lib.batch_mul(1.0 / sigmas**2, scaled_noise)
        losses = reduce_op(jnp.square(score - target)) * sigmas**2
        return jnp.mean(losses)

    return draw_noise, loss_fn


def get_ddpm_loss_fn(vpsde, model, train: bool, reduce_mean: bool = True):
    """The DDPM objective (predict the noise) on the N discrete timesteps of a VP SDE."""
    if vpsde.discrete_loss != "ddpm":
        raise ValueError("DDPM training only works for VPSDEs.")
    sqrt_ab = jnp.asarray(vpsde.sqrt_alphas_cumprod)
    sqrt_1m_ab = jnp.asarray(vpsde.sqrt_1m_alphas_cumprod)
    reduce_op = _reduce_op(reduce_mean)
    draw_noise = _draw_labels_and_z(vpsde.N)

    def loss_fn(params, x, rng, noise=None):
        noise_rng, dropout_rng = jax.random.split(rng)
        noise = draw_noise(noise_rng, x) if noise is None else noise
        labels, z = noise["labels"], noise["z"]
        perturbed = sde_lib.batch_mul(sqrt_ab[labels], x) + sde_lib.batch_mul(sqrt_1m_ab[labels], z)
        model_fn = mutils.get_model_fn(model, _variables(params), train=train, rng=dropout_rng)
        losses = reduce_op(jnp.square(model_fn(perturbed, labels) - z))
        return jnp.mean(losses)

    return draw_noise, loss_fn


def get_loss_fn(sde, model, train: bool, reduce_mean: bool = False, continuous: bool = True,
                likelihood_weighting: bool = False, importance_weighting: bool = False):
    """The SDE loss when `continuous`, else SMLD for VE, DDPM for VP (ValueError for sub-VP)."""
    if continuous:
        return get_sde_loss_fn(sde, model, train, reduce_mean=reduce_mean, continuous=True,
                               likelihood_weighting=likelihood_weighting,
                               importance_weighting=importance_weighting)
    if importance_weighting:
        raise ValueError("training.importance_weighting=True needs continuous-time training "
                         "(training.continuous=True)")
    if likelihood_weighting:
        raise ValueError("Likelihood weighting is not supported for original SMLD/DDPM training.")
    discrete = {"smld": get_smld_loss_fn, "ddpm": get_ddpm_loss_fn}.get(sde.discrete_loss)
    if discrete is None:
        raise ValueError(f"Discrete training for {type(sde).__name__} is not recommended.")
    return discrete(sde, model, train, reduce_mean=reduce_mean)


class StepMetrics(NamedTuple):
    loss: jax.Array
    grad_norm: jax.Array
    lr: jax.Array
    finite: jax.Array  # bool: the loss, gradients and updated parameters were finite (applied)


def get_step_fn(sde, model, train: bool, optimize_fn: optax.GradientTransformation | None = None,
                reduce_mean: bool = False, continuous: bool = True,
                likelihood_weighting: bool = False, ema_rate: float = 0.999,
                lr_fn: Callable | None = None, importance_weighting: bool = False):
    """Train: `step_fn(state, x) -> (state, StepMetrics)` (`train_state.apply_update`). Eval:
    `step_fn(state, x, rng) -> loss` of the EMA parameters. x: (B, H, W, C) scaled data."""
    _, loss_fn = get_loss_fn(sde, model, train, reduce_mean=reduce_mean, continuous=continuous,
                             likelihood_weighting=likelihood_weighting,
                             importance_weighting=importance_weighting)

    if not train:
        def eval_step(state, x, rng):
            return loss_fn(state.ema_params, x, rng)

        return eval_step

    if optimize_fn is None:
        raise ValueError("a training step needs optimize_fn (an optax transformation)")

    def train_step(state, x):
        # fold_in by step: a resumed run continues the same stream.
        rng = jax.random.fold_in(state.rng, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x, rng)
        new_state, grad_norm, finite = apply_update(state, grads, loss, optimize_fn, ema_rate)
        lr = lr_fn(state.step) if lr_fn is not None else jnp.full((), jnp.nan)
        return new_state, StepMetrics(loss=loss, grad_norm=grad_norm, lr=lr, finite=finite)

    return train_step
