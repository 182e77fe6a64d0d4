"""Error per NFE of the adaptive ODE options, for bits/dim and for ODE samples, on a trained model.

    # (a) a score_jax checkpoint (the digits main job):
    python benchmarks/ode_options.py --workdir W [--config configs/digits.py]
    # (b) an official checkpoint of compare_official.py's network, converted (NCSN++, VE, nf=32):
    python benchmarks/ode_options.py --official /path/to/score_sde_pytorch --checkpoint trained.pth
    [--n 8] [--tols 1e-3,1e-4,1e-5] [--reference_tol 1e-6] [--what bpd,sample] [--options ...]

An option is 'method/controller/variable': method 'dopri5' or 'tsit5'; controller 'I' (today's
default) or 'PI' (diffrax's PID with pcoeff 0.4, icoeff 0.3); variable one of
`ode.ODE_VARIABLES`. Bits/dim: `--n` examples (test digits of the config, or with `--official`
compare_official's dequantized upscaled digits), dequantized once, one fixed Rademacher probe for
every solve; error = RMS over the batch of the bits/dim difference to dopri5/I/t at
`--reference_tol`. Samples: `--n` fixed prior latents; error = RMS pixel difference (data in
[0, 1]) to the same reference solve. Prints one row per option and tolerance: NFE, error, wall
seconds of the jitted solve (after compilation; indicative on a shared machine). The tolerance is
a traced argument: one compilation per option and kind.
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from score_jax import checkpoints as ckpt_lib  # noqa: E402
from score_jax import config_lib, datasets, likelihood, ode, sampling  # noqa: E402
from score_jax import sde as sde_lib  # noqa: E402
from score_jax.models import utils as mutils  # noqa: E402

CONTROLLERS = {"I": (0.0, 1.0), "PI": (0.4, 0.3)}
DEFAULT_OPTIONS = ("dopri5/I/t,dopri5/I/sigma,dopri5/I/log_snr,dopri5/I/snr,dopri5/PI/t,"
                   "dopri5/PI/sigma,tsit5/I/sigma")


def parse_option(name: str) -> dict:
    method, controller, variable = (name.split("/") + ["t"])[:3]
    if controller not in CONTROLLERS:
        raise ValueError(f"--options: controller {controller!r} of {name!r} is not I or PI")
    ode.check_variable(variable, f"--options variable of {name!r}")
    pcoeff, icoeff = CONTROLLERS[controller]
    return dict(method=method, pcoeff=pcoeff, icoeff=icoeff, variable=variable)


_COMPILED = {}


def _timed(fn, *args):
    """`fn(*args)` (compiled once per jitted `fn`: the arguments keep their shapes here) and the
    seconds of the call."""
    if fn not in _COMPILED:
        _COMPILED[fn] = fn.lower(*args).compile()
    compiled = _COMPILED[fn]
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, time.perf_counter() - start


def load_network(args):
    """(config, model, variables, bits/dim data (n, H, W, C) scaled, label) of the arguments."""
    if args.official:
        import compare_official  # benchmarks/ is on sys.path when a script here runs

        official = compare_official.import_official(args.official.resolve())
        pair_args = argparse.Namespace(case=None, config=args.config, nf=args.nf, image_size=None,
                                       checkpoint=args.checkpoint, train_steps=0)
        config, _, variables = compare_official.build_pair(pair_args, official)
        x = compare_official.digits_bpd_data(config, args.n, np.random.default_rng(0))
        return (config, mutils.create_model(config), variables, jnp.asarray(x),
                f"{args.checkpoint} (official, {args.config}, nf={args.nf})")
    config = config_lib.load_config(args.config)
    params, step = ckpt_lib.restore_for_sampling(args.workdir)
    batches = datasets.get_dataset(config, split="eval", evaluation=True, batch_size=args.n,
                                   uniform_dequantization=True)
    x = jnp.asarray(datasets.get_data_scaler(config)(next(batches)["image"]))
    return (config, mutils.create_model(config), {"params": params}, x,
            f"{args.workdir} ({args.config}, step {step})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir")
    p.add_argument("--config", default=None,
                   help="default: configs/digits.py, or with --official "
                        "configs/ve/cifar10_ncsnpp_continuous.py")
    p.add_argument("--official", type=pathlib.Path, default=None)
    p.add_argument("--checkpoint", type=pathlib.Path, default=None)
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tols", default="1e-3,1e-4,1e-5")
    p.add_argument("--reference_tol", type=float, default=1e-6)
    p.add_argument("--what", default="bpd,sample")
    p.add_argument("--options", default=DEFAULT_OPTIONS)
    args = p.parse_args()
    if args.config is None:
        args.config = ("configs/ve/cifar10_ncsnpp_continuous.py" if args.official
                       else str(ROOT / "configs" / "digits.py"))
    if (args.official is None) == (args.workdir is None):
        p.error("give either --workdir or --official (with --checkpoint)")
    options = {name: parse_option(name) for name in args.options.split(",")}
    tols = [float(t) for t in args.tols.split(",")]

    config, model, variables, x, label = load_network(args)
    sde, eps = sde_lib.get_sde(config)
    continuous = sde.continuous_labels(config)
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    print(f"# {label}, {args.n} examples, reference dopri5/I/t at {args.reference_tol:g}")

    def table(what, solve):
        start = time.perf_counter()
        (ref, ref_nfe), _ = solve("dopri5/I/t", args.reference_tol)
        print(f"# {what} reference: NFE {ref_nfe}, {time.perf_counter() - start:.0f} s with "
              "compilation", flush=True)
        print(f"| {what}: option | tol | NFE | RMS error | s |\n|---|---:|---:|---:|---:|")
        for name in options:
            for tol in tols:
                (out, nfe), seconds = solve(name, tol)
                err = float(np.sqrt(np.mean((out - ref) ** 2)))
                print(f"| {name} | {tol:g} | {nfe} | {err:.2e} | {seconds:.1f} |", flush=True)

    if "bpd" in args.what:
        probe = jax.random.rademacher(jax.random.PRNGKey(0), x.shape, jnp.float32)

        @functools.lru_cache(maxsize=None)
        def bpd_fn(name):
            def fn(tol, variables, x, probe):
                return likelihood.get_likelihood_fn(
                    sde, model, inverse_scaler, rtol=tol, atol=tol, continuous=continuous,
                    **parse_option(name)).__wrapped__(None, variables, x, probe)
            return jax.jit(fn)

        def bpd(name, tol):
            (b, _, nfe), seconds = _timed(bpd_fn(name), jnp.float32(tol), variables, x, probe)
            return (np.asarray(b, np.float64), int(nfe)), seconds

        table("bits/dim", bpd)

    if "sample" in args.what:
        shape = tuple(x.shape)
        z = sde.prior_sampling(jax.random.PRNGKey(2), shape)

        @functools.lru_cache(maxsize=None)
        def sample_fn(name):
            def fn(tol, variables, z):
                return sampling.get_ode_sampler(
                    sde, model, shape, inverse_scaler, rtol=tol, atol=tol, eps=eps,
                    continuous=continuous, **parse_option(name)).__wrapped__(None, variables, z)
            return jax.jit(fn)

        def sample(name, tol):
            (s, nfe), seconds = _timed(sample_fn(name), jnp.float32(tol), variables, z)
            return (np.asarray(s, np.float64), int(nfe)), seconds

        table("samples", sample)


if __name__ == "__main__":
    main()
