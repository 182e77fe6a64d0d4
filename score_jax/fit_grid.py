"""`--mode fit_grid`: the time grid of `sampling.method` at `sampling.nfe` fitted to the newest
checkpoint (`solvers.fit_time_grid`: mean squared distance to dopri5 at `fit_grid.reference_tol`
from `fit_grid.num_fit` latents). Writes `sampling.grid_file` with the step, `grid_settings` and
the RMS errors ([0, 1] pixels) of the start and fitted grids on fit and `num_validation` latents.
"""
from __future__ import annotations

import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import checkpoints as ckpt_lib
from score_jax import datasets, parallel, sampling, solvers, utils
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

log = logging.getLogger(__name__)


def _check(config):
    """(method, nfe, start grid name or None); ValueError naming the key on bad input."""
    s, f = config.sampling, config.fit_grid
    method = str(s.method).lower()
    fittable = [m for m in solvers.METHODS if m != "adaptive_sde"]
    if method not in fittable:
        raise ValueError(f"--mode fit_grid fits the time grid of a few-step ODE solver; "
                         f"sampling.method={s.method!r} has none; valid: {fittable}")
    for key in ("num_fit", "num_validation"):
        if int(f[key]) < 1:
            raise ValueError(f"fit_grid.{key}={f[key]!r} is invalid: expected an integer >= 1")
    if not float(f.reference_tol) > 0:
        raise ValueError(f"fit_grid.reference_tol={f.reference_tol!r} is invalid: expected > 0")
    start = f.start
    if start is None and isinstance(s.time_grid, str) and s.time_grid in solvers.TIME_GRIDS:
        start = s.time_grid
    solvers.check_args(method, s.nfe, start, s.order, s.variant, bool(s.noise_removal))
    return method, int(s.nfe), start


def fit_grid(config, workdir: str) -> dict:
    """Fits and writes the grid (module docstring); returns the record written, plus 'path'."""
    method, nfe, start = _check(config)
    s, f = config.sampling, config.fit_grid
    kw = dict(order=int(s.order), variant=str(s.variant), denoise=bool(s.noise_removal))
    sde, eps = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    mesh = parallel.make_mesh()
    ema_params, step = ckpt_lib.restore_for_sampling(workdir, sharding=parallel.replicated(mesh))
    continuous = sde.continuous_labels(config)
    net = mutils.get_score_fn(sde, model, {"params": ema_params}, train=False,
                              continuous=continuous)
    score_fn = lambda x, t: net(x, t).astype(x.dtype)  # noqa: E731
    image = (config.data.image_size, config.data.image_size, config.data.num_channels)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xF17)
    z_fit = sde.prior_sampling(jax.random.fold_in(key, 0), (int(f.num_fit),) + image)
    z_val = sde.prior_sampling(jax.random.fold_in(key, 1), (int(f.num_validation),) + image)
    tol = float(f.reference_tol)
    start_time = time.perf_counter()
    ref_fit, ref_val = (solvers.reference_flow(sde, score_fn, z, eps, tol=tol,
                                               denoise=kw["denoise"]) for z in (z_fit, z_val))
    log.info("reference flow of %d + %d latents: %.1f s", len(z_fit), len(z_val),
             time.perf_counter() - start_time)
    info = {}
    grid = solvers.fit_time_grid(sde, score_fn, method, nfe, eps, z_fit, time_grid_kind=start,
                                 reference=ref_fit, max_evals=int(f.max_evals) or None,
                                 info=info, **kw)
    run = solvers.grid_runner(sde, score_fn, method, nfe, eps, **kw)
    scaler = datasets.get_data_inverse_scaler(config)

    def rms(z, ref, ts):  # pixel units, [0, 1]
        return float(jnp.sqrt(jnp.mean((scaler(run(z, ts)) - scaler(ref)) ** 2)))

    errors = {name: {"start": rms(z, ref, info["start"]), "fitted": rms(z, ref, grid)}
              for name, z, ref in (("fit", z_fit, ref_fit), ("validation", z_val, ref_val))}
    record = {**sampling.grid_settings(sde, method, nfe, eps, **kw),
              "checkpoint_step": int(step), "time_grid": grid.tolist(),
              "start_grid": start or solvers.default_time_grid(method, nfe, kw["order"],
                                                               kw["denoise"]),
              "start_time_grid": np.asarray(info["start"]).tolist(),
              "errors": errors, "error_units": "RMS to the reference flow, pixels in [0, 1]",
              "num_fit": int(f.num_fit), "num_validation": int(f.num_validation),
              "reference_tol": tol, "evals": int(info["evals"]),
              "wall_s": time.perf_counter() - start_time}
    path = sampling.grid_file(workdir, method, nfe)
    if parallel.is_main_process():
        with utils.atomic_path(path) as tmp, open(tmp, "w") as fh:
            json.dump(record, fh, indent=1)
    log.info("fitted grid of %s at %d NFE: validation RMS %.4g -> %.4g (%s)", method, nfe,
             errors["validation"]["start"], errors["validation"]["fitted"], path)
    print(json.dumps({"path": path, "step": int(step), "errors": errors}))
    return {**record, "path": path}
