"""The probability-flow ODE (in t or another variable) and its on-device solve (diffrax)."""
from __future__ import annotations

from typing import Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from score_jax import sde as sde_lib

_FIXED_STEP = {"euler": (diffrax.Euler, 1), "heun": (diffrax.Heun, 2)}
_ADAPTIVE = {"dopri5": diffrax.Dopri5, "tsit5": diffrax.Tsit5}
ODE_METHODS = tuple(_ADAPTIVE) + tuple(_FIXED_STEP)


def _rms(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    sq = sum(jnp.sum(jnp.square(v)) for v in leaves)
    return jnp.sqrt(sq / sum(v.size for v in leaves))


def _initial_step(fn, t0, y0, f0, direction, interval, rtol, atol, order=4):
    """Hairer's initial step size (one extra evaluation). Returns |h|."""
    scale = jax.tree_util.tree_map(lambda y: atol + jnp.abs(y) * rtol, y0)
    ratio = lambda a: jax.tree_util.tree_map(lambda u, s: u / s, a, scale)
    d0, d1 = _rms(ratio(y0)), _rms(ratio(f0))
    h0 = jnp.minimum(jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1), interval)
    y1 = jax.tree_util.tree_map(lambda y, f: y + h0 * direction * f, y0, f0)
    f1 = fn(t0 + h0 * direction, y1)
    d2 = _rms(ratio(jax.tree_util.tree_map(lambda a, b: a - b, f1, f0))) / h0
    h1 = jnp.where((d1 <= 1e-15) & (d2 <= 1e-15), jnp.maximum(1e-6, h0 * 1e-3),
                   (0.01 / jnp.maximum(d1, d2)) ** (1.0 / (order + 1)))
    return jnp.minimum(jnp.minimum(100 * h0, h1), interval)


def solve_ode(fn, y0, t0: float, t1: float, *, method="dopri5", rtol=1e-5, atol=1e-5,
              fixed_nfe: int | None = None, max_steps: int = 4096,
              adjoint=None, pcoeff: float = 0.0, icoeff: float = 1.0):
    """Integrates dy/dt = fn(t, y) (y any pytree, t a scalar) from t0 to t1 on device; returns
    `(y(t1), nfe)`, nfe (int32) the exact number of `fn` calls. 'dopri5', 'tsit5': adaptive, RMS
    error norm over the whole state, PID coefficients `pcoeff`, `icoeff` (0, 1: I-controller);
    'euler', 'heun': `fixed_nfe` evaluations. More than `max_steps` steps gives NaN."""
    term = diffrax.ODETerm(lambda t, y, args: fn(t, y))
    saveat = diffrax.SaveAt(t1=True)
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    if method in _FIXED_STEP:
        solver_cls, evals = _FIXED_STEP[method]
        if fixed_nfe is None or fixed_nfe < evals:
            raise ValueError(f"method={method!r} needs fixed_nfe >= {evals} (network evaluations)")
        n = int(fixed_nfe) // evals
        grid = diffrax.StepTo(ts=jnp.linspace(t0, t1, n + 1, dtype=jnp.float32))
        sol = diffrax.diffeqsolve(term, solver_cls(), t0, t1, None, y0, saveat=saveat,
                                  stepsize_controller=grid, max_steps=n, adjoint=adjoint,
                                  throw=False)
        return _final_state(sol), jnp.int32(n * evals)
    if method not in _ADAPTIVE:
        raise ValueError(f"unknown ODE method {method!r}; valid: {list(ODE_METHODS)}")
    direction = 1.0 if t1 > t0 else -1.0
    t0_arr = jnp.asarray(t0, jnp.float32)
    f0 = fn(t0_arr, y0)
    first_step = _initial_step(fn, t0_arr, y0, f0, direction, abs(t1 - t0), rtol, atol)
    # throw=False: NaN, not diffrax's run-time error (a host callback, which keeps the executable
    # out of the persistent compilation cache).
    sol = diffrax.diffeqsolve(
        term, _ADAPTIVE[method](), t0, t1, None, y0, saveat=saveat,
        stepsize_controller=_FirstStepPID(rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff,
                                          first_step=first_step),
        max_steps=max_steps,
        # diffrax's FSAL state (first_step, f0): the first step reuses our f(t0, y0).
        solver_state=(jnp.array(False), f0), adjoint=adjoint, throw=False)
    nfe = 2 + 6 * sol.stats["num_steps"]
    return _final_state(sol), jnp.asarray(nfe, jnp.int32)


class _FirstStepPID(diffrax.PIDController):
    """diffrax's PIDController whose first step is `first_step` (> 0, a traced value)."""

    # Not `dt0`: a traced dt0 gets a sign check by host callback. diffrax integrates t1 < t0 in
    # negated time, so the step is positive either way.

    first_step: jax.Array = None

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return super().init(terms, t0, t1, y0, self.first_step, args, func, error_order)


def _final_state(sol):
    """y(t1) of a diffrax solution saved at t1; NaN where the solve did not succeed."""
    ok = sol.result == diffrax.RESULTS.successful
    return jax.tree_util.tree_map(lambda v: jnp.where(ok, v[-1], jnp.nan), sol.ys)


def probability_flow_drift(sde, score_fn):
    """`drift(t, x)` of the probability-flow ODE, t a scalar (taken in x's dtype)."""
    rsde = sde.reverse(score_fn, probability_flow=True)
    return lambda t, x: rsde.sde(x, jnp.full((x.shape[0],), t, x.dtype))[0]


ODE_VARIABLES = ("t", "sigma", "log_snr", "snr")
# Step-size controllers: diffrax PID (pcoeff, icoeff).
CONTROLLERS = {"I": (0.0, 1.0), "PI": (0.4, 0.3)}
# The `ode_*` keys of the `sampling` and `eval` config blocks, and their values when absent.
DEFAULT_OPTIONS = {"ode_method": "dopri5", "ode_rtol": 1e-5, "ode_atol": 1e-5,
                   "ode_controller": "I", "ode_variable": "t"}
# Samples: the PI controller reached each error with fewer evaluations on both networks measured
# (README "Choosing the ODE solver"); bits/dim: mixed, so the likelihood keeps 'I'.
BLOCK_DEFAULTS = {"sampling": {"ode_controller": "PI"}}


def solver_options(block, prefix: str) -> dict:
    """Keyword arguments of the ODE sampler/likelihood from the `ode_*` keys of config block
    `prefix` ('sampling', 'eval'); ValueError naming the first bad key."""
    defaults = {**DEFAULT_OPTIONS, **BLOCK_DEFAULTS.get(prefix, {})}
    v = {k: block.get(k, d) if block is not None else d for k, d in defaults.items()}
    valid = {"ode_method": list(_ADAPTIVE), "ode_controller": list(CONTROLLERS),
             "ode_variable": list(ODE_VARIABLES)}
    for key, values in valid.items():
        if v[key] not in values:
            raise ValueError(f"{prefix}.{key}={v[key]!r} is invalid: expected one of {values}")
    for key in ("ode_rtol", "ode_atol"):
        if isinstance(v[key], bool) or not isinstance(v[key], (int, float)) or not v[key] > 0:
            raise ValueError(f"{prefix}.{key}={v[key]!r} is invalid: expected a number > 0")
    pcoeff, icoeff = CONTROLLERS[v["ode_controller"]]
    return dict(method=v["ode_method"], rtol=float(v["ode_rtol"]), atol=float(v["ode_atol"]),
                pcoeff=pcoeff, icoeff=icoeff, variable=v["ode_variable"])


class Flow(NamedTuple):
    """dy/ds = drift(s, y) in a variable s, with x_t = scale(t) y."""

    drift: Callable  # (s scalar, y (batch, ...)) -> dy/ds
    s_of_t: Callable  # t (host float) -> s (host float)
    scale: Callable  # t (batch,) -> scale (batch,)


def check_variable(variable: str, key: str = "variable") -> str:
    if variable not in ODE_VARIABLES:
        raise ValueError(f"{key}={variable!r} is unknown; valid: {list(ODE_VARIABLES)}")
    return variable


def probability_flow(sde, score_fn, variable: str = "t") -> Flow:
    """The probability-flow ODE of `sde` in `variable` (README "Choosing the ODE solver"): 't'
    (x against t), 'sigma' (x/alpha against std/alpha), 'log_snr' (x/alpha against lambda =
    log(alpha/std)), 'snr' (x/std against alpha/std). t(s) is `sde.t_from_log_snr`, on device."""
    # x_t = alpha x_0 + std z and g^2 = d(std^2)/dt - 2 f std^2 (VE, VP, sub-VP) give, with
    # eps = -std score: dy/dsigma = eps, dy/dlambda = -sigma eps, d(x/std)/d(alpha/std) = x0.
    check_variable(variable)
    if variable == "t":
        return Flow(probability_flow_drift(sde, score_fn), float, jnp.ones_like)
    to_lam, from_lam = {"sigma": (lambda s: -jnp.log(s), lambda lam: jnp.exp(-lam)),
                        "log_snr": (lambda s: s, lambda lam: lam),
                        "snr": (jnp.log, jnp.exp)}[variable]

    def drift(s, y):
        t = jnp.full((y.shape[0],), sde.t_from_log_snr(to_lam(s)), y.dtype)
        alpha, std = sde.alpha(t), sde.sigma(t)
        scale = std if variable == "snr" else alpha
        x = sde_lib.batch_mul(scale, y)
        eps = -sde_lib.batch_mul(std, score_fn(x, t))
        if variable == "sigma":
            return eps
        if variable == "log_snr":
            return -sde_lib.batch_mul(std / alpha, eps)
        return sde_lib.batch_mul(1.0 / alpha, x - sde_lib.batch_mul(std, eps))

    def s_of_t(t):
        with jax.ensure_compile_time_eval():  # host floats, also when called under jit
            return float(from_lam(sde.log_snr(jnp.float32(t))))

    def scale(t):
        return sde.sigma(t) if variable == "snr" else sde.alpha(t)

    return Flow(drift, s_of_t, scale)
