"""Error per NFE of the adaptive ODE options, for bits/dim and for ODE samples, on a trained model.

    python benchmarks/ode_options.py --workdir W [--config configs/digits.py] [--n 8]
        [--tols 1e-3,1e-4,1e-5] [--reference_tol 1e-6] [--what bpd,sample]

Options: dopri5 with the I-controller (today's default), dopri5 with diffrax's PI controller
(pcoeff 0.4, icoeff 0.3), Tsit5 with each. Bits/dim: the first `--n` test digits, uniformly
dequantized once, one fixed Rademacher probe for every solve; error = RMS over the batch of the
bits/dim difference to dopri5/I at `--reference_tol`. Samples: `--n` fixed prior latents; error =
RMS pixel difference (data in [0, 1]) to the same reference solve. Prints one row per option and
tolerance: NFE, error, wall seconds of the jitted solve (after compilation).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import checkpoints as ckpt_lib
from score_jax import config_lib, datasets, likelihood, sampling
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

OPTIONS = {"dopri5/I": ("dopri5", 0.0, 1.0), "dopri5/PI": ("dopri5", 0.4, 0.3),
           "tsit5/I": ("tsit5", 0.0, 1.0), "tsit5/PI": ("tsit5", 0.4, 0.3)}


def _timed(fn, *args):
    out = jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", default=str(ROOT / "configs" / "digits.py"))
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tols", default="1e-3,1e-4,1e-5")
    p.add_argument("--reference_tol", type=float, default=1e-6)
    p.add_argument("--what", default="bpd,sample")
    p.add_argument("--options", default=",".join(OPTIONS))
    args = p.parse_args()

    config = config_lib.load_config(args.config)
    sde, eps = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    params, step = ckpt_lib.restore_for_sampling(args.workdir)
    variables = {"params": params}
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    tols = [float(t) for t in args.tols.split(",")]
    options = args.options.split(",")
    print(f"# {args.config} step {step}, {args.n} examples, reference dopri5/I at "
          f"{args.reference_tol:g}")

    if "bpd" in args.what:
        batches = datasets.get_dataset(config, split="eval", evaluation=True, batch_size=args.n,
                                       uniform_dequantization=True)
        x = jnp.asarray(datasets.get_data_scaler(config)(next(batches)["image"]))
        probe = jax.random.rademacher(jax.random.PRNGKey(0), x.shape, jnp.float32)

        def bpd(method, pcoeff, icoeff, tol):
            fn = likelihood.get_likelihood_fn(sde, model, inverse_scaler, rtol=tol, atol=tol,
                                              method=method, pcoeff=pcoeff, icoeff=icoeff)
            (b, _, nfe), seconds = _timed(fn, jax.random.PRNGKey(1), variables, x, probe)
            return np.asarray(b, np.float64), int(nfe), seconds

        ref, ref_nfe, _ = bpd("dopri5", 0.0, 1.0, args.reference_tol)
        print(f"# bits/dim reference: mean {ref.mean():.4f}, NFE {ref_nfe}")
        print("| bits/dim: option | tol | NFE | RMS error | s |\n|---|---:|---:|---:|---:|")
        for name in options:
            for tol in tols:
                b, nfe, seconds = bpd(*OPTIONS[name], tol)
                err = float(np.sqrt(np.mean((b - ref) ** 2)))
                print(f"| {name} | {tol:g} | {nfe} | {err:.2e} | {seconds:.1f} |", flush=True)

    if "sample" in args.what:
        shape = (args.n, config.data.image_size, config.data.image_size, config.data.num_channels)
        z = sde.prior_sampling(jax.random.PRNGKey(2), shape)

        def sample(method, pcoeff, icoeff, tol):
            fn = sampling.get_ode_sampler(sde, model, shape, inverse_scaler, rtol=tol, atol=tol,
                                          method=method, eps=eps, pcoeff=pcoeff, icoeff=icoeff)
            (s, nfe), seconds = _timed(fn, jax.random.PRNGKey(3), variables, z)
            return np.asarray(s, np.float64), int(nfe), seconds

        ref, ref_nfe, _ = sample("dopri5", 0.0, 1.0, args.reference_tol)
        print(f"# sample reference: NFE {ref_nfe}")
        print("| samples: option | tol | NFE | RMS error | s |\n|---|---:|---:|---:|---:|")
        for name in options:
            for tol in tols:
                s, nfe, seconds = sample(*OPTIONS[name], tol)
                err = float(np.sqrt(np.mean((s - ref) ** 2)))
                print(f"| {name} | {tol:g} | {nfe} | {err:.2e} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
