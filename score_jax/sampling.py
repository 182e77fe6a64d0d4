"""Samplers of Song et al. (2021), each one jitted function: PC sampling (a lax.scan over the N
noise levels), the probability-flow ODE (`score_jax.ode`) and the few-step `score_jax.solvers`.
Predictors `(sde, score_fn, x, t, z, probability_flow) -> (x, x_mean)`, z shaped like x;
correctors `(sde, score_fn, x, t, z, snr) -> (x, x_mean)`, z of shape (n_steps,) + x.shape.
Arrays are NHWC, `t` has shape (batch,)."""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from score_jax import ode, parallel, solvers
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils
from score_jax.sde import batch_mul

Array = jax.Array


def euler_maruyama(sde, score_fn, x, t, z, probability_flow=False):
    """Euler-Maruyama step of the reverse SDE (or, with `probability_flow`, ODE) with dt = -1/N."""
    dt = -1.0 / sde.N
    drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
    x_mean = x + drift * dt
    return x_mean + batch_mul(diffusion * np.sqrt(-dt), z), x_mean


def reverse_diffusion(sde, score_fn, x, t, z, probability_flow=False):
    """Reverse-diffusion step x - f + G z: the forward discretization run backwards."""
    f, g = sde.reverse(score_fn, probability_flow).discretize(x, t)
    x_mean = x - f
    return x_mean + batch_mul(g, z), x_mean


def ancestral_sampling(sde, score_fn, x, t, z, probability_flow=False):
    """Ancestral sampling of SMLD (VE) and DDPM (VP); ValueError on sub-VP or probability flow."""
    _check_ancestral(sde, probability_flow)
    x_mean, std = sde.ancestral_step(x, score_fn(x, t), t)
    return x_mean + batch_mul(std, z), x_mean


def _check_ancestral(sde, probability_flow):
    if not sde.has_ancestral_step:
        raise ValueError(f"ancestral_sampling is not defined for {type(sde).__name__} (it has no "
                         "discrete Markov chain); use reverse_diffusion or euler_maruyama")
    if probability_flow:
        raise ValueError(
            "ancestral_sampling has no probability-flow version (probability_flow=True)")


def none_predictor(sde, score_fn, x, t, z, probability_flow=False):
    return x, x


def _batch_norm(v):
    return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


def _langevin_loop(score_fn, x, t, z, step_size_fn):
    """`z.shape[0]` steps x <- x + e score + sqrt(2 e) z, e = step_size_fn(score, z)."""

    def step(carry, z_i):
        x, _ = carry
        grad = score_fn(x, t)
        step_size = step_size_fn(grad, z_i)
        x_mean = x + batch_mul(step_size, grad)
        return (x_mean + batch_mul(jnp.sqrt(step_size * 2), z_i), x_mean), None

    (x, x_mean), _ = jax.lax.scan(step, (x, x), z)
    return x, x_mean


def langevin(sde, score_fn, x, t, z, snr):
    """Langevin corrector (paper Alg. 4/5): step size 2 alpha (snr ||z|| / ||score||)^2."""
    alpha = sde.langevin_alpha(t)

    def step_size(grad, z_i):
        # Norms averaged over the whole batch: a sharded batch reduces across devices.
        return (snr * _batch_norm(z_i) / _batch_norm(grad)) ** 2 * 2 * alpha

    return _langevin_loop(score_fn, x, t, z, step_size)


def ald(sde, score_fn, x, t, z, snr):
    """Annealed Langevin dynamics of NCSN: step size 2 alpha (snr std(t))^2."""
    alpha = sde.langevin_alpha(t)
    std = sde.marginal_prob(x, t)[1]
    return _langevin_loop(score_fn, x, t, z, lambda grad, z_i: (snr * std) ** 2 * 2 * alpha)


def none_corrector(sde, score_fn, x, t, z, snr):
    return x, x


_PREDICTORS = {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion,
               "ancestral_sampling": ancestral_sampling, "none": none_predictor}
_CORRECTORS = {"langevin": langevin, "ald": ald, "none": none_corrector}


def get_predictor(name: str):
    """The predictor function registered as `name` (case-insensitive)."""
    return _lookup(_PREDICTORS, name, "predictor")


def get_corrector(name: str):
    """The corrector function registered as `name` (case-insensitive)."""
    return _lookup(_CORRECTORS, name, "corrector")


def _lookup(registry, name, kind):
    if callable(name):
        return name
    key = str(name).lower()
    if key not in registry:
        raise ValueError(f"unknown {kind} {name!r}; valid: {sorted(registry)}")
    return registry[key]


class StepNoise(NamedTuple):
    """Normal draws of one PC step: corrector (n_steps,) + shape, the others shape; `*_proj` feed
    the projection after each update (controllable_generation)."""

    corrector: Array
    corrector_proj: Array
    predictor: Array
    predictor_proj: Array


def normal_step_noise(key, shape, n_steps: int, dtype=jnp.float32) -> StepNoise:
    k = jax.random.split(key, 4)
    return StepNoise(jax.random.normal(k[0], (n_steps,) + tuple(shape), dtype),
                     jax.random.normal(k[1], shape, dtype), jax.random.normal(k[2], shape, dtype),
                     jax.random.normal(k[3], shape, dtype))


def timesteps(sde, eps: float) -> np.ndarray:
    """The PC time grid linspace(T, eps, N) in float32."""
    # float32 as torch computes it, so the table index floor(t (N-1)/T) matches PyTorch's.
    return sde_lib.linspace32(sde.T, eps, sde.N)


def pc_loop(sde, score_fn, x, step_inputs, draw, *, predictor, corrector, snr, n_steps=1,
            probability_flow=False, eps=1e-3, project=None):
    """The N PC steps from x_T, corrector then predictor at each t; returns the last (x, x_mean).
    Step i uses `draw(step_inputs[i]) -> StepNoise`; `project(x, x_mean, t, z) -> (x, x_mean)`
    follows every update (inpainting, colorization)."""
    check_pc_args(sde, predictor, corrector, probability_flow, n_steps)
    predictor_fn, corrector_fn = get_predictor(predictor), get_corrector(corrector)
    score_fn = _dtype_stable(score_fn, x.dtype)
    ts = jnp.asarray(timesteps(sde, eps))

    def body(carry, inputs):
        x, _ = carry
        t_i, step_input = inputs
        noise = draw(step_input)
        t = jnp.full((x.shape[0],), t_i, ts.dtype)
        x, x_mean = corrector_fn(sde, score_fn, x, t, noise.corrector, snr)
        if project is not None:
            x, x_mean = project(x, x_mean, t, noise.corrector_proj)
        x, x_mean = predictor_fn(sde, score_fn, x, t, noise.predictor, probability_flow)
        if project is not None:
            x, x_mean = project(x, x_mean, t, noise.predictor_proj)
        return (x, x_mean), None

    (x, x_mean), _ = jax.lax.scan(body, (x, x), (ts, step_inputs))
    return x, x_mean


def check_pc_args(sde, predictor, corrector, probability_flow, n_steps) -> None:
    """ValueError on unknown names, undefined ancestral sampling, n_steps < 1, and N <= beta_max
    for steps that use alpha_i (negative: all samples NaN)."""
    uses_alphas = [name for name, uses in (
        (corrector, get_corrector(corrector) in (langevin, ald)),
        (predictor, get_predictor(predictor) is ancestral_sampling)) if uses]
    if uses_alphas:
        sde.check_discrete_chain(" and ".join(map(repr, uses_alphas)))
    if get_predictor(predictor) is ancestral_sampling:
        _check_ancestral(sde, probability_flow)
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(
            f"n_steps (sampling.n_steps_each) must be an integer >= 1, got {n_steps!r}")


def _dtype_stable(score_fn, dtype):
    # A float64 score (discrete VE under x64: float64 sigma table) must not promote the state.
    return lambda x, t: score_fn(x, t).astype(dtype)


def check_model_shape(score_fn, shape) -> None:
    """Raises ValueError unless `score_fn` maps an x of `shape` to an array of the same shape."""
    x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    t = jax.ShapeDtypeStruct((shape[0],), jnp.float32)
    try:
        out = jax.eval_shape(score_fn, x, t)
    except Exception as e:  # the network's own error is deep in its layers; say what went wrong
        raise ValueError(f"the score model cannot take samples of shape {tuple(shape)} (batch, H, "
                         f"W, C): {type(e).__name__}: {e}") from e
    if out.shape != tuple(shape):
        raise ValueError(f"the score model maps samples of shape {tuple(shape)} to {out.shape}; "
                         "the sampling shape must match the model's image size and channels")


def get_pc_sampler(sde, model, shape, predictor, corrector, inverse_scaler, snr, n_steps=1,
                   probability_flow=False, continuous=False, denoise=True, eps=1e-3,
                   sharding: NamedSharding | None = None):
    """A jitted PC sampler `(rng, variables) -> (samples, nfe)`: `inverse_scaler` of the last
    x_mean (`denoise`) or x, shaped `shape`; nfe = N (n_steps + 1) (int32, 'none' steps counted)."""
    shape = tuple(int(s) for s in shape)
    check_pc_args(sde, predictor, corrector, probability_flow, n_steps)
    parallel.check_sharding(shape, sharding)

    def sampler(rng, variables):
        score_fn = mutils.get_score_fn(sde, model, variables, train=False, continuous=continuous)
        check_model_shape(score_fn, shape)
        prior_key, loop_key = jax.random.split(rng)
        x = parallel.constrain(sde.prior_sampling(prior_key, shape), sharding)
        x, x_mean = pc_loop(
            sde, score_fn, x, jax.random.split(loop_key, sde.N),
            lambda key: normal_step_noise(key, shape, n_steps), predictor=predictor,
            corrector=corrector, snr=snr, n_steps=n_steps, probability_flow=probability_flow,
            eps=eps)
        samples = inverse_scaler(x_mean if denoise else x)
        return parallel.constrain(samples, sharding), jnp.int32(sde.N * (n_steps + 1))

    return jax.jit(sampler)


def _score_and_latent(sde, model, variables, shape, continuous, sharding, key, z):
    """The float32 score function and x_T: `z` (checked against `shape`) or a prior draw."""
    score_fn = mutils.get_score_fn(sde, model, variables, train=False, continuous=continuous)
    check_model_shape(score_fn, shape)
    score_fn = _dtype_stable(score_fn, jnp.float32)
    if z is None:
        x = sde.prior_sampling(key, shape)
    elif tuple(z.shape) != shape:
        raise ValueError(f"latent z has shape {tuple(z.shape)}, the sampler's shape is {shape}")
    else:
        x = jnp.asarray(z, jnp.float32)
    return score_fn, parallel.constrain(x, sharding)


def get_ode_sampler(sde, model, shape, inverse_scaler, denoise=False, rtol=1e-5, atol=1e-5,
                    method="dopri5", eps=1e-3, continuous=True, fixed_nfe: int | None = None,
                    sharding: NamedSharding | None = None, pcoeff: float = 0.0,
                    icoeff: float = 1.0, variable: str = "t"):
    """A jitted probability-flow ODE sampler `(rng, variables, z=None) -> (samples, nfe)`.

    Solves the probability-flow ODE from T (x_T = `z`, or a prior draw) to `eps` with
    `ode.solve_ode` (`method`, `rtol`, `atol`, `fixed_nfe`, `pcoeff`, `icoeff`) in `variable`
    (`ode.probability_flow`); `z` given makes
    it the decoder of the latent code the likelihood returns. `denoise` adds one noise-free
    reverse-diffusion step at eps (as official).
    nfe (int32) is the exact number of score evaluations, the denoising one included (the official
    nfe leaves it out). `continuous=True` (official) feeds the network continuous-time labels;
    pass `config.training.continuous` for discrete-label networks (the official code crashes on
    discrete VE ones).
    """
    shape = tuple(int(s) for s in shape)
    if method not in ode.ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; valid: {list(ode.ODE_METHODS)}")
    ode.check_variable(variable)
    parallel.check_sharding(shape, sharding)

    def sampler(rng, variables, z=None):
        score_fn, x = _score_and_latent(sde, model, variables, shape, continuous, sharding, rng, z)
        flow = ode.probability_flow(sde, score_fn, variable)
        scale_T, scale_0 = (flow.scale(jnp.full((shape[0],), t, jnp.float32)) for t in (sde.T, eps))
        y, nfe = ode.solve_ode(flow.drift, sde_lib.batch_mul(1.0 / scale_T, x), flow.s_of_t(sde.T),
                               flow.s_of_t(eps), method=method, rtol=rtol, atol=atol,
                               fixed_nfe=fixed_nfe, pcoeff=pcoeff, icoeff=icoeff)
        x = sde_lib.batch_mul(scale_0, y)
        if denoise:
            t = jnp.full((shape[0],), eps, jnp.float32)
            _, x = reverse_diffusion(sde, score_fn, x, t, jnp.zeros_like(x))
            nfe = nfe + 1
        return parallel.constrain(inverse_scaler(x), sharding), nfe

    return jax.jit(sampler)


def sde_description(sde) -> dict:
    """{'name', 'T', noise scales}: what a fitted grid depends on."""
    keys = ("sigma_min", "sigma_max") if isinstance(sde, sde_lib.VESDE) else ("beta_min",
                                                                              "beta_max")
    return {"name": type(sde).__name__, "T": float(sde.T),
            **{k: float(getattr(sde, k)) for k in keys}}


def grid_file(workdir: str, method: str, nfe: int) -> str:
    """W/grids/<method>_<nfe>.json, where `--mode fit_grid` writes."""
    return os.path.join(workdir, "grids", f"{method}_{int(nfe)}.json")


def grid_settings(sde, method, nfe, eps, order=3, variant="bh2", denoise=False) -> dict:
    """The settings a fitted grid is valid for (stored in the file, compared on reading)."""
    settings = {"sde": sde_description(sde), "eps": float(eps), "nfe": int(nfe),
                "method": method, "noise_removal": bool(denoise)}
    if method in solvers.ORDERS:
        settings["order"] = int(order)
    if method == "unipc":
        settings["variant"] = variant
    return settings


def _mismatch(stored: dict, wanted: dict) -> list[str]:
    out = []
    for key, value in wanted.items():
        have = stored.get(key)
        if isinstance(value, dict):
            out += [f"sde.{k}" for k in _mismatch(have or {}, value)] if isinstance(have, dict) \
                else [key]
        elif isinstance(value, float):
            if not isinstance(have, (int, float)) or not np.isclose(have, value, rtol=1e-9,
                                                                    atol=0):
                out.append(key)
        elif have != value:
            out.append(key)
    return out


def read_grid_file(path: str, sde, method, nfe, eps, order=3, variant="bh2",
                   denoise=False) -> np.ndarray:
    """The grid (float64, T to eps) of a grid file; ValueError naming each mismatched setting."""
    if not os.path.isfile(path):
        raise ValueError(f"sampling.time_grid: the grid file {path!r} does not exist (write it "
                         "with --mode fit_grid)")
    with open(path) as f:
        record = json.load(f)
    wanted = grid_settings(sde, method, nfe, eps, order, variant, denoise)
    bad = _mismatch(record, wanted)
    if bad:
        def get(d, k):
            for part in k.split("."):
                d = d.get(part) if isinstance(d, dict) else None
            return d

        details = "; ".join(f"{k}: file {get(record, k)!r}, sampler {get(wanted, k)!r}"
                            for k in bad)
        raise ValueError(f"sampling.time_grid: the grid file {path!r} was fitted for other "
                         f"settings ({details})")
    return np.asarray(record["time_grid"], np.float64)


def resolve_time_grid(time_grid, sde, method, nfe, eps, *, order=3, variant="bh2",
                      denoise=False, workdir: str | None = None):
    """`sampling.time_grid` as `solvers.table` takes it: a name or None unchanged, times as
    float64, 'fitted' (`grid_file(workdir, ...)`) or a path read by `read_grid_file`."""
    if time_grid is None or (isinstance(time_grid, str) and time_grid in solvers.TIME_GRIDS):
        return time_grid
    if not isinstance(time_grid, str):
        return np.asarray(time_grid, np.float64)
    if time_grid == "fitted":
        if workdir is None:
            raise ValueError("sampling.time_grid='fitted' needs the workdir of the fitted grid "
                             "(W/grids/<method>_<nfe>.json); pass a grid file's path instead")
        path = grid_file(workdir, method, nfe)
    elif time_grid.endswith(".json") or os.sep in time_grid:
        path = time_grid
    else:
        raise ValueError(f"sampling.time_grid={time_grid!r} is unknown; valid: "
                         f"{list(solvers.TIME_GRIDS)}, 'fitted', a grid file (.json) or an "
                         "array of times")
    return read_grid_file(path, sde, method, nfe, eps, order, variant, denoise)


def get_solver_sampler(sde, model, shape, inverse_scaler, method, nfe=20, time_grid=None,
                       order=3, variant="bh2", rtol=0.05, atol=0.0078, denoise=False, eps=1e-3,
                       continuous=True, sharding: NamedSharding | None = None,
                       workdir: str | None = None):
    """A jitted few-step sampler `(rng, variables, z=None) -> (samples, nfe)`, nfe exact (int32):
    x_T = `z` or a prior draw, `time_grid` as `resolve_time_grid`; 'adaptive_sde' to rtol, atol."""
    shape = tuple(int(s) for s in shape)
    if method != "adaptive_sde":
        time_grid = resolve_time_grid(time_grid, sde, method, nfe, eps, order=order,
                                      variant=variant, denoise=denoise, workdir=workdir)
    solvers.check_args(method, nfe, time_grid, order, variant, denoise)
    tab = None if method == "adaptive_sde" else solvers.table(
        sde, method, nfe, eps, time_grid_kind=time_grid, order=order, variant=variant,
        denoise=denoise)
    parallel.check_sharding(shape, sharding)

    def sampler(rng, variables, z=None):
        prior_key, noise_key = jax.random.split(rng)
        score_fn, x = _score_and_latent(sde, model, variables, shape, continuous, sharding,
                                        prior_key, z)
        if tab is None:
            x, n = solvers.adaptive_sde(sde, score_fn, x, noise_key, eps, rtol=rtol, atol=atol,
                                        denoise=denoise)
        else:
            x, n = solvers.integrate(sde, score_fn, x, tab), jnp.int32(len(tab.t))
        return parallel.constrain(inverse_scaler(x), sharding), n

    return jax.jit(sampler)


def get_sampling_fn(config, sde, model, shape, inverse_scaler, eps,
                    sharding: NamedSharding | None = None, workdir: str | None = None):
    """The sampler of `config.sampling.method`: `(rng, variables) -> (samples, nfe)`; 'ode' and the
    few-step methods also take a latent `z`; 'ode' reads `sampling.ode_*` (`ode.solver_options`)."""
    s = config.sampling
    method = str(s.method).lower()
    if method == "pc":
        return get_pc_sampler(sde, model, shape, s.predictor, s.corrector, inverse_scaler, s.snr,
                              n_steps=s.n_steps_each, probability_flow=s.probability_flow,
                              continuous=config.training.continuous, denoise=s.noise_removal,
                              eps=eps, sharding=sharding)
    continuous = sde.continuous_labels(config)
    if method == "ode":
        return get_ode_sampler(sde, model, shape, inverse_scaler, denoise=s.noise_removal, eps=eps,
                               continuous=continuous, sharding=sharding,
                               **ode.solver_options(s, "sampling"))
    if method not in solvers.METHODS:
        raise ValueError(f"sampling.method={s.method!r} is unknown; valid: "
                         f"{['pc', 'ode', *solvers.METHODS]}")
    return get_solver_sampler(
        sde, model, shape, inverse_scaler, method, nfe=s.nfe, time_grid=s.time_grid,
        order=s.order, variant=s.variant, rtol=s.rtol, atol=s.atol, denoise=s.noise_removal,
        eps=eps, continuous=continuous, sharding=sharding, workdir=workdir)


def sampler_settings(config, *, step: int, weights: str, num_samples: int,
                     workdir: str | None = None, **extra) -> dict:
    """{name: value} of all that decides the samples of `--mode sample`/`eval` (sampling.*, SDE,
    batch size, seed, step, the `weights` fingerprint, `extra`); outputs are keyed by it."""
    values = config.sampling.to_dict()
    # Keyed by the grid file, whose contents `utils.settings_key` hashes: a refit is a new setting.
    if values.get("time_grid") == "fitted" and workdir is not None:
        values["time_grid"] = grid_file(workdir, str(config.sampling.method).lower(),
                                        int(config.sampling.nfe))
    m = config.model
    scales = {k: m.get(k) for k in ("num_scales", "sigma_min", "sigma_max", "beta_min",
                                     "beta_max")}
    return {"sampling": values, "sde": str(config.training.sde).lower(),
            "continuous": bool(config.training.continuous), **scales,
            "batch_size": int(config.eval.batch_size), "num_samples": int(num_samples),
            "seed": int(config.seed), "step": int(step), "weights": weights, **extra}


def check_finite(samples) -> None:
    """FloatingPointError naming how many samples of the batch contain NaN or inf."""
    flat = np.asarray(jax.device_get(samples)).reshape(len(samples), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise FloatingPointError(
            f"{int(bad.sum())} of {len(flat)} samples contain NaN or inf values "
            f"(indices {np.flatnonzero(bad)[:10].tolist()}{'...' if bad.sum() > 10 else ''})")
