"""The forward SDEs of Song et al. (2021), VE, VP and sub-VP, and their reverses. Arrays NHWC (or
any rank: per-example values broadcast over trailing axes), `t` (batch,) in [0, T]; an SDE owns
what samplers, losses and networks need to know about it (marginal, log-SNR, label, score, D)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_mul(a: Array, x: Array) -> Array:
    """Multiplies per-example scalars `a` (batch,) into `x` (batch, ...)."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def _check_positive_int(name: str, value) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_t(t, T: float) -> None:
    # Raises on concrete `t` outside [0, T]; traced `t` is the caller's contract.
    if isinstance(t, jax.core.Tracer):
        return
    t_np = np.asarray(t)
    if t_np.size and (np.any(t_np < 0) or np.any(t_np > T)):
        raise ValueError(f"t must lie in [0, T={T}], got values in [{t_np.min()}, {t_np.max()}]")


@struct.dataclass(kw_only=True)
class SDE:
    """Interface of the SDEs: frozen dataclasses of static fields (safe to close over in jit)."""

    # Keyword-only (the subclasses' own parameters come first): discretization steps, end time.
    N: int = struct.field(pytree_node=False, default=1000)
    T: float = struct.field(pytree_node=False, default=1.0)
    # The paper's smallest sampling/likelihood time.
    sampling_eps = 1e-3
    # Name of the discrete objective of `training.continuous=False` ('smld', 'ddpm'), or None.
    discrete_loss = None
    # Discrete networks take an integer index into their noise table (so no time label works).
    discrete_label_is_index = False
    # Whether `ancestral_step` is defined (a discrete Markov chain exists).
    has_ancestral_step = False

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift f(x, t) (shape of x) and diffusion g(t) (batch,)."""
        raise NotImplementedError

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean (shape of x) and std (batch,) of the perturbation kernel p_{0t}(x(t) | x(0) = x)."""
        raise NotImplementedError

    def prior_sampling(self, rng: Array, shape) -> Array:
        """A sample of p_T with the given (batch, ...) shape."""
        raise NotImplementedError

    def prior_logp(self, z: Array) -> Array:
        """log p_T(z) per example, shape (batch,), in nats."""
        raise NotImplementedError

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Euler-Maruyama step x_{i+1} = x_i + f + G z with dt = T/N: f (shape of x), G (batch,)."""
        dt = 1.0 / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * jnp.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or its probability-flow ODE) for a score model `score_fn(x, t)`."""
        return ReverseSDE(forward=self, score_fn=score_fn, probability_flow=probability_flow)

    def timestep(self, t: Array) -> Array:
        """Discrete index floor(t (N-1)/T), int32 (batch,), computed in t's precision."""
        _check_t(t, self.T)
        idx = (t * (self.N - 1) / self.T).astype(jnp.int32)
        return jnp.clip(idx, 0, self.N - 1)

    def alpha(self, t: Array) -> Array:
        """Mean coefficient of the marginal x_t = alpha_t x_0 + sigma_t z (shape of t)."""
        raise NotImplementedError

    def sigma(self, t: Array) -> Array:
        """Noise std of the marginal x_t = alpha_t x_0 + sigma_t z (shape of t)."""
        raise NotImplementedError

    def log_snr(self, t: Array) -> Array:
        """Half log signal-to-noise ratio lambda_t = log(alpha_t / sigma_t), decreasing in t."""
        raise NotImplementedError

    def t_from_log_snr(self, lam: Array) -> Array:
        """The inverse of `log_snr`: the time t with lambda_t = lam."""
        raise NotImplementedError

    def network_label(self, t: Array, continuous: bool) -> Array:
        """The label the score network is conditioned on at time t (shape of t)."""
        raise NotImplementedError

    def continuous_labels(self, config) -> bool:
        """`network_label`'s `continuous` for a network trained with `config`: its
        `training.continuous` where discrete labels are indices (VE), else True."""
        # VP's continuous label 999 t serves discrete networks too.
        return bool(config.training.continuous) if self.discrete_label_is_index else True

    def score_from_output(self, output: Array, t: Array, continuous: bool) -> Array:
        """The score of p_t from the network output at x_t (both (batch, ...))."""
        raise NotImplementedError

    def data_prediction(self, x: Array, score: Array, t: Array) -> Array:
        """D(x_t) = E[x_0 | x_t] = (x_t + sigma_t^2 score) / alpha_t (Tweedie), shape of x."""
        return batch_mul(1.0 / self.alpha(t), x + batch_mul(self.sigma(t) ** 2, score))

    def noise_prediction(self, score: Array, t: Array) -> Array:
        """eps(x_t) = -sigma_t score: the z of x_t = alpha_t x_0 + sigma_t z, predicted."""
        return batch_mul(-self.sigma(t), score)

    def ancestral_step(self, x: Array, score: Array, t: Array) -> tuple[Array, Array]:
        """One ancestral sampling step of the discrete chain: mean (shape of x) and std (batch,)."""
        raise ValueError(f"ancestral sampling is not defined for {type(self).__name__} (it has no "
                         "discrete Markov chain); use reverse_diffusion or euler_maruyama")

    def langevin_alpha(self, t: Array) -> Array:
        """The alpha_i in the Langevin corrector's step size 2 alpha_i (snr ...)^2 (shape of t)."""
        return jnp.ones_like(t)

    def check_discrete_chain(self, what: str) -> None:
        """Raises ValueError if `what` (a sampler using the discrete alpha_i) cannot run here."""


def linspace32(start: float, stop: float, num: int) -> np.ndarray:
    # float32 linspace computed like torch (from both ends toward the middle), for bit-equal
    # discrete noise tables: sqrt(sigma_i^2 - sigma_{i-1}^2) amplifies one ulp 50-fold.
    start, stop = np.float32(start), np.float32(stop)
    step = (stop - start) / np.float32(max(num - 1, 1))
    i = np.arange(num, dtype=np.float32)
    return np.where(i < num // 2, start + step * i, stop - step * (num - 1 - i)).astype(np.float32)


def _std_normal_logp(z: Array, scale: float = 1.0) -> Array:
    n = np.prod(z.shape[1:])
    sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=1)
    return -n / 2.0 * np.log(2 * np.pi * scale**2) - sq / (2.0 * scale**2)


@struct.dataclass
class VPSDE(SDE):
    """Variance-preserving SDE; beta(t) = beta_min + t (beta_max - beta_min). Continuous DDPM."""

    beta_min: float = struct.field(pytree_node=False, default=0.1)
    beta_max: float = struct.field(pytree_node=False, default=20.0)
    discrete_loss = "ddpm"
    has_ancestral_step = True

    def __post_init__(self):
        _check_positive_int("model.num_scales (N)", self.N)
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"model.beta_min={self.beta_min} must not exceed model.beta_max={self.beta_max}")
        if self.beta_min < 0:
            raise ValueError(f"model.beta_min must be >= 0, got {self.beta_min}")

    # DDPM tables (float32, computed as the official code does).
    @property
    def discrete_betas(self) -> np.ndarray:
        return linspace32(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas(self) -> np.ndarray:
        return (1.0 - self.discrete_betas).astype(np.float32)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        # torch accumulates a float32 cumprod in float64 on the CPU.
        return np.cumprod(self.alphas.astype(np.float64)).astype(np.float32)

    @property
    def sqrt_alphas_cumprod(self) -> np.ndarray:
        # N <= beta_max makes some alpha_i <= 0: NaN where the product is negative, as official
        # (the samplers that need these tables refuse such N).
        with np.errstate(invalid="ignore"):
            return np.sqrt(self.alphas_cumprod)

    @property
    def sqrt_1m_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alphas_cumprod)

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Array) -> Array:
        """log of the marginal mean coefficient, -int_0^t beta(s) ds / 2."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sde(self, x, t):
        beta_t = self.beta(t)
        return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t)

    def alpha(self, t):
        return jnp.exp(self.log_mean_coeff(t))

    def sigma(self, t):
        # 1 - e^{2 lmc}, not expm1: the official std, which the networks were trained with.
        return jnp.sqrt(1.0 - jnp.exp(2.0 * self.log_mean_coeff(t)))

    def log_snr(self, t):
        lmc = self.log_mean_coeff(t)
        return lmc - 0.5 * jnp.log(-jnp.expm1(2.0 * lmc))

    def _t_from_log_mean_coeff(self, lmc):
        # Positive root of (beta_max - beta_min) t^2 / 4 + beta_min t / 2 + lmc = 0, in the form
        # without cancellation (also exact when beta_max = beta_min).
        d = self.beta_max - self.beta_min
        return -2.0 * lmc / (0.5 * self.beta_min + jnp.sqrt(0.25 * self.beta_min**2 - d * lmc))

    def t_from_log_snr(self, lam):
        # alpha^2 = sigmoid(2 lambda)  =>  lmc = -softplus(-2 lambda) / 2.
        return self._t_from_log_mean_coeff(-0.5 * jax.nn.softplus(-2.0 * jnp.asarray(lam)))

    def marginal_prob(self, x, t):
        return batch_mul(self.alpha(t), x), self.sigma(t)

    def network_label(self, t, continuous):
        # Continuous VP networks see 999 t; discrete (DDPM) ones the float index t (N - 1).
        return t * 999 if continuous else t * (self.N - 1)

    def score_from_output(self, output, t, continuous):
        # The network predicts the noise: score = -output / std.
        if continuous:
            std = self.sigma(t)
        else:
            std = jnp.asarray(self.sqrt_1m_alphas_cumprod)[(t * (self.N - 1)).astype(jnp.int32)]
        return batch_mul(-1.0 / std, output)

    def ancestral_step(self, x, score, t):
        """DDPM ancestral step: mean (x + beta_i score) / sqrt(1 - beta_i), std sqrt(beta_i)."""
        beta = jnp.asarray(self.discrete_betas)[self.timestep(t)]
        return batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score)), jnp.sqrt(beta)

    def langevin_alpha(self, t):
        # The DDPM alpha_i = 1 - beta_i (sub-VP reads the same table of its shared betas).
        return jnp.asarray(self.alphas)[self.timestep(t)]

    def check_discrete_chain(self, what):
        if float(self.alphas.min()) <= 0:
            # alpha_i = 1 - beta_i reaches 1 - beta_max / N; its square root is NaN.
            raise ValueError(
                f"{what} on {type(self).__name__} needs N > beta_max (it takes square roots of "
                f"alpha_i = 1 - beta_i, beta_i up to beta_max / N); got model.num_scales "
                f"N={self.N}, model.beta_max={self.beta_max}")

    def prior_sampling(self, rng, shape):
        return jax.random.normal(rng, shape)

    def prior_logp(self, z):
        return _std_normal_logp(z)

    def discretize(self, x, t):
        """DDPM step: f = (sqrt(alpha_i) - 1) x, G = sqrt(beta_i)."""
        i = self.timestep(t)
        beta = jnp.asarray(self.discrete_betas)[i]
        alpha = jnp.asarray(self.alphas)[i]
        return batch_mul(jnp.sqrt(alpha), x) - x, jnp.sqrt(beta)


@struct.dataclass
class subVPSDE(VPSDE):
    """Sub-VP SDE: the VP drift with diffusion beta(t) (1 - e^{-2 int_0^t beta})."""

    def sde(self, x, t):
        beta_t = self.beta(t)
        discount = 1.0 - jnp.exp(-2.0 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
        return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t * discount)

    discrete_loss = None
    has_ancestral_step = False

    def sigma(self, t):
        # No square root: the sub-VP variance is (1 - e^{-int beta})^2.
        return 1.0 - jnp.exp(2.0 * self.log_mean_coeff(t))

    def log_snr(self, t):
        lmc = self.log_mean_coeff(t)
        return lmc - jnp.log(-jnp.expm1(2.0 * lmc))

    def t_from_log_snr(self, lam):
        # alpha / (1 - alpha^2) = e^lambda  =>  log alpha = -asinh(e^{-lambda} / 2).
        return self._t_from_log_mean_coeff(-jnp.arcsinh(0.5 * jnp.exp(-jnp.asarray(lam))))

    def network_label(self, t, continuous):
        # Sub-VP networks always see 999 t (there is no discrete sub-VP).
        return t * 999

    def score_from_output(self, output, t, continuous):
        return batch_mul(-1.0 / self.sigma(t), output)

    ancestral_step = SDE.ancestral_step
    discretize = SDE.discretize


@struct.dataclass
class VESDE(SDE):
    """Variance-exploding SDE; sigma(t) = sigma_min (sigma_max / sigma_min)^t. Continuous SMLD."""

    sigma_min: float = struct.field(pytree_node=False, default=0.01)
    sigma_max: float = struct.field(pytree_node=False, default=50.0)
    sampling_eps = 1e-5
    discrete_loss = "smld"
    discrete_label_is_index = True
    has_ancestral_step = True

    def __post_init__(self):
        _check_positive_int("model.num_scales (N)", self.N)
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < model.sigma_min < model.sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}")

    @property
    def discrete_sigmas(self) -> np.ndarray:
        """The SMLD noise levels, increasing from sigma_min to sigma_max (float32, shape (N,))."""
        log_sigmas = linspace32(np.log(self.sigma_min), np.log(self.sigma_max), self.N)
        return np.exp(log_sigmas.astype(np.float64)).astype(np.float32)

    def alpha(self, t):
        return jnp.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def log_snr(self, t):
        return -(np.log(self.sigma_min) + t * np.log(self.sigma_max / self.sigma_min))

    def t_from_log_snr(self, lam):
        return ((-jnp.asarray(lam) - np.log(self.sigma_min))
                / np.log(self.sigma_max / self.sigma_min))

    def network_label(self, t, continuous):
        # Continuous VE networks see sigma(t); discrete (NCSN) ones the index of their sigma table,
        # which runs from sigma_max down: round((T - t)(N - 1)).
        if continuous:
            return self.sigma(t)
        return jnp.round((self.T - t) * (self.N - 1)).astype(jnp.int32)

    def score_from_output(self, output, t, continuous):
        return output

    def ancestral_step(self, x, score, t):
        """SMLD ancestral step between noise levels sigma_i > sigma_{i-1} (sigma_{-1} = 0)."""
        i = self.timestep(t)
        sigmas = jnp.asarray(self.discrete_sigmas)
        sigma = sigmas[i]
        adjacent = jnp.where(i == 0, jnp.zeros_like(sigma), sigmas[jnp.maximum(i - 1, 0)])
        x_mean = x + batch_mul(sigma**2 - adjacent**2, score)
        return x_mean, jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)

    def sde(self, x, t):
        diffusion = self.sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
        return jnp.zeros_like(x), diffusion.astype(x.dtype)

    def marginal_prob(self, x, t):
        return x, self.sigma(t)

    def prior_sampling(self, rng, shape):
        return jax.random.normal(rng, shape) * self.sigma_max

    def prior_logp(self, z):
        return _std_normal_logp(z, self.sigma_max)

    def discretize(self, x, t):
        """SMLD step: f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2) (sigma_{-1} = 0)."""
        i = self.timestep(t)
        sigmas = jnp.asarray(self.discrete_sigmas)
        sigma = sigmas[i]
        adjacent = jnp.where(i == 0, jnp.zeros_like(sigma), sigmas[jnp.maximum(i - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """Reverse-time SDE dx = [f - g^2 score] dt + g dw-bar, or with `probability_flow` the ODE
    dx = [f - g^2 score / 2] dt (diffusion 0). Holds no arrays: build it inside jitted code."""

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def N(self) -> int:
        return self.forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    def _reverse(self, x, t, f, g):
        score = self.score_fn(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        drift = f - batch_mul(g**2, score) * weight
        return drift, (jnp.zeros_like(g) if self.probability_flow else g)

    def sde(self, x, t):
        """Reverse drift (shape of x) and diffusion (batch,); diffusion is 0 for the ODE."""
        return self._reverse(x, t, *self.forward.sde(x, t))

    def discretize(self, x, t):
        """Reverse discretization: f - G^2 score (x 1/2 for the ODE), and G (0 for the ODE)."""
        return self._reverse(x, t, *self.forward.discretize(x, t))


_SDES = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": subVPSDE}


def get_sde(config) -> tuple[SDE, float]:
    """(SDE of `config.training.sde`, sampling_eps): where samplers and likelihood stop."""
    name = str(config.training.sde).lower()
    if name not in _SDES:
        raise ValueError(
            f"training.sde={config.training.sde!r} is unknown; valid: {sorted(_SDES)}")
    cls, m = _SDES[name], config.model
    scales = ({"sigma_min": float(m.sigma_min), "sigma_max": float(m.sigma_max)} if cls is VESDE
              else {"beta_min": float(m.beta_min), "beta_max": float(m.beta_max)})
    sde = cls(N=int(m.num_scales), **scales)
    return sde, sde.sampling_eps
