"""`--mode nfe_sweep`: sample quality against the number of network evaluations.

For every `sweep.methods` x `sweep.nfe` point, the newest checkpoint of W samples
`sweep.num_samples` images from the same latents (batch i: the prior draw of
fold_in(PRNGKey(seed), i)) with `sampling.get_solver_sampler`. Per point it records the exact NFE,
the wall time of sampling (compilation excluded), the RMS and max error to a reference solution of
the first `sweep.reference_batches` batches (the probability-flow ODE by dopri5 at
rtol = atol = `sweep.reference_tol`, computed once and cached), and FID/KID against
the eval mode's reference statistics (`metrics.stats_path`) when `sweep.fid` is set.

A method is a name of `solvers.METHODS`, optionally with `sampling.*` overrides:
'dpm_solver++:order=2,time_grid=logsnr'. Outputs in `W/sweep/ckpt_<step>/`: `points/<point>.json`
(one per finished point: a rerun skips those, so an interrupted sweep resumes point by point) and
`<point>.{npz,png}` (the first batch), then `table.csv`, `table.json` and `<metric>.png` (metric vs
NFE, log x, one line per method). Every file is written atomically.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time

import jax
import numpy as np
import tqdm

from score_jax import checkpoints as ckpt_lib
from score_jax import datasets, parallel, sampling, solvers, utils
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

log = logging.getLogger(__name__)

METRICS = ("rms_error", "max_error", "wall_s", "fid", "kid", "kid_std")
_OVERRIDES = {"order": int, "variant": str, "time_grid": str, "rtol": float, "atol": float}


def parse_method(spec: str) -> tuple[str, dict]:
    """'name' or 'name:key=value,...' -> (name, {sampling key: value}); ValueError on bad input."""
    name, _, rest = str(spec).partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in _OVERRIDES or not value:
            raise ValueError(f"sweep.methods entry {spec!r}: {item!r} is not key=value with key in "
                             f"{sorted(_OVERRIDES)}")
        overrides[key] = _OVERRIDES[key](value)
    return name, overrides


def _points(config, workdir=None):
    """[(label, method, kwargs of get_solver_sampler, nfe)], every one checked up front (grid
    files included: `time_grid=fitted` is W/grids/<method>_<nfe>.json of `workdir`)."""
    sde, eps = sde_lib.get_sde(config)
    s, points = config.sampling, []
    for spec in config.sweep.methods:
        method, over = parse_method(spec)
        kw = {"time_grid": s.time_grid, "order": s.order, "variant": s.variant, "rtol": s.rtol,
              "atol": s.atol, **over}
        for nfe in config.sweep.nfe:
            # 'fitted' or a grid file: read and checked now, for this method and budget.
            grid = kw["time_grid"] if method == "adaptive_sde" else sampling.resolve_time_grid(
                kw["time_grid"], sde, method, nfe, eps, order=kw["order"], variant=kw["variant"],
                denoise=bool(s.noise_removal), workdir=workdir)
            solvers.check_args(method, nfe, grid, kw["order"], kw["variant"],
                               bool(s.noise_removal))
            label = f"{spec.replace(':', '_').replace(',', '_').replace('=', '')}_nfe{nfe}"
            label = label.replace(os.sep, "_")
            points.append((label, spec, method, {**kw, "time_grid": grid}, int(nfe)))
    return points


def quality_fn(config):
    """`fn(samples in [0, 1]) -> {'fid', 'kid', 'kid_std'}` against `metrics.reference_stats`
    with the `eval.*` Inception and KID settings, or None when `sweep.fid` is off."""
    if not config.sweep.fid:
        return None
    from score_jax import metrics

    reference = metrics.reference_stats(config)
    inception = metrics.inception_fn(config, batch_size=int(config.eval.batch_size))

    def fn(samples):
        return metrics.fid_kid(inception(metrics.samples_to_uint8(samples))["pool_3"], reference,
                               config)

    return fn


def _latents(sde, config, shape, i):
    return sde.prior_sampling(jax.random.fold_in(jax.random.PRNGKey(config.seed), i), shape)


def _reference(config, sde, model, variables, shape, inverse_scaler, eps, sharding, path):
    """Samples (reference_batches * B, H, W, C) of the dopri5 flow from the sweep's latents."""
    s, tol = config.sweep, float(config.sweep.reference_tol)
    n = int(s.reference_batches)
    if os.path.exists(path):
        with np.load(path) as f:
            if float(f["tol"]) == tol and f["samples"].shape == (n * shape[0],) + shape[1:]:
                return f["samples"]
    continuous = sde.continuous_labels(config)
    ode = sampling.get_ode_sampler(sde, model, shape, lambda x: x, rtol=tol, atol=tol, eps=eps,
                                   continuous=continuous, sharding=sharding)
    denoise = jax.jit(lambda v, x: solvers.prediction_fn(sde, mutils.get_score_fn(
        sde, model, v, continuous=continuous), "data")(x, eps))
    out = []
    for i in tqdm.trange(n, desc="reference (dopri5)", unit="batch"):
        x, _ = ode(jax.random.PRNGKey(0), variables, _latents(sde, config, shape, i))
        if config.sampling.noise_removal:
            x = denoise(variables, x)
        out.append(np.asarray(jax.device_get(inverse_scaler(x))))
    samples = np.concatenate(out)
    with utils.atomic_path(path) as tmp:
        np.savez(tmp, samples=samples, tol=tol)
    return samples


def _point(config, sde, model, variables, shape, inverse_scaler, eps, sharding, reference,
           quality, method, kw, nfe, stem):
    continuous = sde.continuous_labels(config)
    fn = sampling.get_solver_sampler(sde, model, shape, inverse_scaler, method, nfe=nfe,
                                     denoise=bool(config.sampling.noise_removal), eps=eps,
                                     continuous=continuous, sharding=sharding, **kw)
    rng = jax.random.PRNGKey(config.seed + 1)
    jax.block_until_ready(fn(rng, variables, _latents(sde, config, shape, 0)))  # compile
    n_batches = math.ceil(int(config.sweep.num_samples) / shape[0])
    batches, wall, used = [], 0.0, None
    for i in range(n_batches):
        z = _latents(sde, config, shape, i)
        start = time.perf_counter()
        x, used = jax.block_until_ready(fn(jax.random.fold_in(rng, i), variables, z))
        wall += time.perf_counter() - start
        batches.append(np.asarray(jax.device_get(x)))
    samples = np.concatenate(batches)
    sampling.check_finite(samples)
    diff = samples[:len(reference)] - reference
    result = {"nfe": int(used), "wall_s": wall, "num_samples": len(samples),
              "rms_error": float(np.sqrt(np.mean(diff**2))),
              "max_error": float(np.max(np.abs(diff)))}
    if quality is not None:
        result.update(quality(samples))
    utils.save_samples(batches[0], stem)
    return result


def nfe_sweep(config, workdir: str) -> dict:
    """Runs the sweep described in the module docstring; returns {'step', 'dir', 'rows'}."""
    points = _points(config, workdir)
    sde, eps = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    mesh = parallel.make_mesh()
    ema_params, step = ckpt_lib.restore_for_sampling(workdir, sharding=parallel.replicated(mesh))
    variables = {"params": ema_params}
    batch = int(config.eval.batch_size)
    parallel.check_batch_size(batch, what="eval.batch_size")
    shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
    sharding = parallel.batch_sharding(mesh)
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    out_dir = os.path.join(workdir, "sweep", f"ckpt_{int(step)}")
    reference = _reference(config, sde, model, variables, shape, inverse_scaler, eps, sharding,
                           os.path.join(out_dir, "reference.npz"))
    quality = quality_fn(config)
    rows = []
    for label, spec, method, kw, nfe in tqdm.tqdm(points, desc="nfe sweep", unit="point"):
        path = os.path.join(out_dir, "points", label + ".json")
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
            continue
        result = {"method": spec, "budget": nfe, **_point(
            config, sde, model, variables, shape, inverse_scaler, eps, sharding, reference,
            quality, method, kw, nfe, os.path.join(out_dir, "points", label))}
        with utils.atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        rows.append(result)
    write_table(rows, out_dir)
    summary = {"step": int(step), "dir": out_dir, "rows": rows}
    print(json.dumps({"step": int(step), "dir": out_dir, "points": len(rows)}))
    return summary


def write_table(rows: list[dict], out_dir: str) -> None:
    """`table.csv`, `table.json` and one `<metric>.png` per metric present (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["method", "budget", "nfe", "num_samples"] + [m for m in METRICS
                                                           if any(m in r for r in rows)]
    with utils.atomic_path(os.path.join(out_dir, "table.csv")) as tmp, open(tmp, "w") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with utils.atomic_path(os.path.join(out_dir, "table.json")) as tmp, open(tmp, "w") as f:
        json.dump(rows, f, indent=1)
    for metric in columns[4:]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["nfe"], r[metric]) for r in rows if r["method"] == method)
            ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xscale("log")
        nfes = sorted({r["nfe"] for r in rows})
        ax.minorticks_off()
        ax.set_xticks(nfes, [str(n) for n in nfes])
        if metric.endswith("error"):
            ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        fig.tight_layout()
        with utils.atomic_path(os.path.join(out_dir, f"{metric}.png")) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
