"""Why few-step errors on a trained network seemed to fall like 1/NFE: the error of UniPC-3 and
DPM-Solver++(2M) at 10-160 NFE against dopri5 references of several tolerances, in float32 and
with the network run in float64, with and without the final denoising step.

    python benchmarks/digits_convergence.py --workdir /work/runs/digits_copy --n 32

Prints, per reference (tolerance, precision), the distance between references and each
solver's RMS error (pixel units, [0, 1]) with the slope of log error against log NFE. A solver
of order p shows slope ~p against a reference much more accurate than itself, and a floor at the
reference's own error against a looser one.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from score_jax import checkpoints as ckpt_lib  # noqa: E402
from score_jax import sde as sde_lib
from score_jax import solvers
from score_jax.models import utils as mutils  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 40, 80, 160])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-4, 1e-5, 1e-6])
    parser.add_argument("--cache", default="", help="npz to keep the references in")
    parser.add_argument("--tol64", type=float, default=1e-8,
                        help="tolerance of the float64 reference (0: none)")
    args = parser.parse_args()
    config = ml_collections.ConfigDict(json.load(open(os.path.join(args.workdir,
                                                                   "config.json"))))
    sde, eps = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    params, step = ckpt_lib.restore_for_sampling(args.workdir)
    shape = (args.n, config.data.image_size, config.data.image_size, config.data.num_channels)
    z = sde.prior_sampling(jax.random.PRNGKey(99), shape)

    def score_for(p):
        net = mutils.get_score_fn(sde, model, {"params": p}, train=False, continuous=True)
        return lambda x, t: net(x, t).astype(x.dtype)

    score = score_for(params)
    if args.cache and os.path.exists(args.cache):
        with np.load(args.cache) as f:
            refs = {k: f[k] for k in f.files}
    else:
        refs = compute_refs(args, sde, eps, score, score_for, params, z)
        if args.cache:
            np.savez(args.cache, **refs)
    report(args, sde, eps, score, z, refs, step)


def compute_refs(args, sde, eps, score, score_for, params, z):
    refs = {}
    for tol in args.tols:
        refs[f"dopri5 {tol:g} f32"] = np.asarray(solvers.reference_flow(sde, score, z, eps,
                                                                        tol=tol))
        print(f"reference {tol:g} done", file=sys.stderr, flush=True)
    if args.tol64:
        with jax.enable_x64(True):
            p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
            refs[f"dopri5 {args.tol64:g} f64"] = np.asarray(solvers.reference_flow(
                sde, score_for(p64), jnp.asarray(z, jnp.float64), eps, tol=args.tol64,
                max_steps=65536), np.float32)
        print("float64 reference done", file=sys.stderr, flush=True)
    return refs


def report(args, sde, eps, score, z, refs, step):

    def rms(a, b):  # pixel units for data in [-1, 1]
        return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2))) / 2

    best = list(refs)[-1]
    print(f"digits step {step}, {args.n} latents; distance of each reference to '{best}':")
    for k, r in refs.items():
        print(f"  {k}: {rms(r, refs[best]):.3g}")
    for method, kw in [("dpm_solver++", {"order": 2}), ("unipc", {"order": 3, "variant": "bh2"})]:
        ys = {}
        for nfe in args.nfe:
            run = solvers.grid_runner(sde, score, method, nfe, eps, **kw)
            ys[nfe] = np.asarray(run(z, "logsnr"))
        print(f"\n{method} {kw}, logsnr grid, no denoising: RMS error to each reference")
        print("| reference | " + " | ".join(f"{n} NFE" for n in args.nfe) + " | slope |")
        print("|---|" + "---:|" * (len(args.nfe) + 1))
        for k, r in refs.items():
            errs = [rms(ys[n], r) for n in args.nfe]
            slope = -np.polyfit(np.log(args.nfe), np.log(errs), 1)[0]
            print(f"| {k} | " + " | ".join(f"{e:.3g}" for e in errs) + f" | {slope:.2f} |")
        # Per sample: a few samples whose path crosses a place where the network's prediction
        # changes fast (between two digits) can dominate an RMS over a small batch.
        per = np.array([[rms(ys[n][i], refs[best][i]) for i in range(len(z))]
                        for n in args.nfe])
        med = np.median(per, 1)
        slope = -np.polyfit(np.log(args.nfe), np.log(med), 1)[0]
        print("median over samples of the per-sample RMS error vs best reference: "
              + " ".join(f"{e:.3g}" for e in med) + f" (slope {slope:.2f}); worst sample's "
              "share of the squared error: " + " ".join(
                  f"{np.max(p**2) / np.sum(p**2):.2f}" for p in per))
        # Local slopes against the best reference, pair by pair.
        errs = [rms(ys[n], refs[best]) for n in args.nfe]
        local = [-np.log(errs[i + 1] / errs[i]) / np.log(args.nfe[i + 1] / args.nfe[i])
                 for i in range(len(errs) - 1)]
        print("local slopes vs best reference:", " ".join(f"{s:.2f}" for s in local))


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
