"""Sampler and likelihood overhead: wall time over NFE x the time of one jitted network call.

    python benchmarks/bench_sampling.py                              # small conv net, CPU sizes
    python benchmarks/bench_sampling.py --model ncsnpp_ve_cont_small --batch 16 --image_size 32
    python benchmarks/bench_sampling.py --model configs/ve/cifar10_ncsnpp_continuous.py --batch 64

`--model small` is a small Flax conv net defined here; any other value is a reference case
(`tests/data/<case>.json`, e.g. `ncsnpp_ve_cont_small`, a tiny NCSN++) or a config file, built
with `score_jax.models.utils.init_model`. For each it times (after compilation, median of
`--repeats` calls, interleaved):

* `forward`: one jitted score evaluation `score_fn(x, t)` on the batch;
* `jvp`: one jitted drift-and-divergence evaluation of the likelihood (a `jax.jvp` of the drift);
* `forward in loop`, `jvp in loop`: the same inside a jitted `fori_loop` of `--loop` evaluations
  (x <- x + 1e-3 f(x)), per evaluation: the network cost without dispatch, which on a loaded
  CPU is the steadier unit;
* the PC sampler (reverse diffusion + 1 Langevin step, N = `--N` levels, nfe = 2N), the Dopri5
  ODE sampler and the likelihood at rtol = atol = 1e-3 and 1e-5, and the few-step samplers of
  `score_jax.solvers` at a budget of `--nfe` evaluations (adaptive_sde at its default tolerances);

and prints NFE, wall time and ratio = time / (NFE x unit), the unit being `forward` for the
samplers and `jvp` for the likelihood (1.0 = no overhead beyond the network calls), and the same
ratio against the in-loop unit.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax import likelihood, ode, sampling, solvers
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

import timing  # benchmarks/ is on sys.path when a script here runs


class SmallScoreNet(nn.Module):
    """A small time-conditional conv net (Fourier label embedding, 4 conv blocks with GroupNorm
    and SiLU): a stand-in for a real score network when timing the samplers."""

    channels: int = 64
    blocks: int = 4

    @nn.compact
    def __call__(self, x, labels, train: bool = False):
        freqs = jnp.exp(jnp.linspace(0.0, 4.0, self.channels // 2))
        emb = jnp.log(jnp.asarray(labels, jnp.float32) + 1e-3)[:, None] * freqs
        emb = nn.Dense(self.channels)(jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], -1))
        h = nn.Conv(self.channels, (3, 3))(x)
        for _ in range(self.blocks):
            r = nn.silu(nn.GroupNorm(num_groups=8)(h))
            r = nn.Conv(self.channels, (3, 3))(r) + nn.Dense(self.channels)(emb)[:, None, None]
            h = h + nn.Conv(self.channels, (3, 3))(nn.silu(nn.GroupNorm(num_groups=8)(r)))
        return nn.Conv(x.shape[-1], (3, 3))(nn.silu(nn.GroupNorm(num_groups=8)(h)))


def build(model_name: str, batch: int, image_size: int, channels: int, n_levels: int):
    """(sde, model, variables, shape) for `--model`."""
    if model_name == "small":
        sde = sde_lib.VESDE(N=n_levels)
        shape = (batch, image_size, image_size, channels)
        model = SmallScoreNet()
        variables = model.init(jax.random.key(0), jnp.zeros(shape), jnp.ones((batch,)))
        return sde, model, variables, shape
    from bench_train import load_config  # reference case or config file

    config = load_config(model_name)
    config.model.num_scales = n_levels
    sde, _ = sde_lib.get_sde(config)
    shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
    model = mutils.create_model(config)
    variables = mutils.init_model(jax.random.key(0), config, batch_size=batch)
    return sde, model, variables, shape


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=16, help="small net only")
    parser.add_argument("--channels", type=int, default=3, help="small net only")
    parser.add_argument("--N", type=int, default=100, help="PC noise levels")
    parser.add_argument("--nfe", type=int, default=20, help="few-step samplers' budget")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop", type=int, default=20, help="evaluations of the in-loop units")
    args = parser.parse_args()

    sde, model, variables, shape = build(args.model, args.batch, args.image_size, args.channels,
                                         args.N)
    identity = lambda x: x
    eps = sde.sampling_eps
    rng = jax.random.key(1)
    x = jax.random.normal(jax.random.key(2), shape)
    data = jnp.clip(0.5 * x, -1, 1)
    t = jnp.full((shape[0],), 0.5)

    def forward(v, x, t):
        return mutils.get_score_fn(sde, model, v, continuous=True)(x, t)

    def jvp(v, x, t):
        drift = ode.probability_flow_drift(sde, mutils.get_score_fn(sde, model, v,
                                                                         continuous=True))
        return likelihood.hutchinson_divergence(lambda y: drift(t[0], y), x, x)

    def in_loop(fn):
        def step(i, y):  # uses every output, so none of the work is dead code
            out = fn(variables, y, t)
            out, extra = (out, 0.0) if not isinstance(out, tuple) else out
            return y + 1e-3 * out + 1e-6 * jnp.reshape(extra, (-1,) + (1,) * (y.ndim - 1))

        return jax.jit(lambda x: jax.lax.fori_loop(0, args.loop, step, x))

    forward_loop, jvp_loop = in_loop(forward), in_loop(jvp)
    forward, jvp = jax.jit(forward), jax.jit(jvp)
    pc = sampling.get_pc_sampler(sde, model, shape, "reverse_diffusion", "langevin", identity,
                                 0.16, continuous=True, eps=eps)
    runs = {"PC (rd + langevin)": (lambda: pc(rng, variables), "forward")}
    for tol in (1e-3, 1e-5):
        ode_fn = sampling.get_ode_sampler(sde, model, shape, identity, rtol=tol, atol=tol, eps=eps)
        lik = likelihood.get_likelihood_fn(sde, model, identity, rtol=tol, atol=tol)
        runs[f"ODE dopri5 tol {tol:g}"] = (lambda f=ode_fn: f(rng, variables), "forward")
        runs[f"bpd dopri5 tol {tol:g}"] = (lambda f=lik: f(rng, variables, data), "jvp")

    for method in solvers.METHODS:
        fn = sampling.get_solver_sampler(sde, model, shape, identity, method, nfe=args.nfe, eps=eps)
        runs[method] = (lambda f=fn: f(rng, variables), "forward")

    units = {"forward": lambda: forward(variables, x, t), "jvp": lambda: jvp(variables, x, t),
             "forward in loop": lambda: forward_loop(x), "jvp in loop": lambda: jvp_loop(x)}
    compile_s = {}
    nfes = {}
    for name, fn in list(units.items()) + [(k, f) for k, (f, _) in runs.items()]:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        compile_s[name] = time.perf_counter() - t0
        if name in runs:
            nfes[name] = int(out[-1])
    names = list(units) + list(runs)
    medians = dict(zip(names, timing.medians([units[n] if n in units else runs[n][0]
                                                   for n in names], args.repeats)))
    for unit in ("forward", "jvp"):
        medians[unit + " in loop"] /= args.loop

    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{jax.device_count()} device(s), {os.cpu_count()} CPU cores; model {args.model}, "
          f"samples {shape}, {type(sde).__name__} N={sde.N}")
    print(", ".join(f"{u} {1e3 * medians[u]:.3f} ms" for u in units))
    header = f"{'run':<22} {'nfe':>6} {'time s':>9} {'ms/nfe':>8} {'unit':>8} {'ratio':>6} " \
             f"{'ratio in loop':>13} {'compile s':>9}"
    print(header)
    print("-" * len(header))
    for name, (_, unit) in runs.items():
        m, nfe = medians[name], nfes[name]
        print(f"{name:<22} {nfe:>6} {m:>9.3f} {1e3 * m / nfe:>8.3f} {unit:>8} "
              f"{m / (nfe * medians[unit]):>6.3f} "
              f"{m / (nfe * medians[unit + ' in loop']):>13.3f} {compile_s[name]:>9.1f}",
              flush=True)


if __name__ == "__main__":
    main()
