"""Training throughput: jitted train steps/s, and the step's overhead over one forward+backward.

    python benchmarks/bench_train.py   # the five small reference cases + CIFAR-10 NCSN++
    python benchmarks/bench_train.py --cases ddpm_vp_small --batch_sizes 8 --repeats 5

For each network and batch size it times (after compilation, median of `--repeats` calls):
* `step`: one call of the training function of `score_jax.train` (n_jitted_steps = 1: loss,
  gradient, Adam with warm-up and clipping, EMA, sharded over every device);
* `fwd+bwd`: `jax.value_and_grad` of the same loss alone (jitted, same batch);
and prints steps/s, images/s and the ratio step / fwd+bwd (1.0 = no overhead).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

import jax
import jax.numpy as jnp
import ml_collections

from score_jax import config_lib, losses, parallel, train
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

import timing  # benchmarks/ is on sys.path when a script here runs

CASES = ["ncsnpp_ve_cont_small", "ddpmpp_vp_cont_small", "ddpmpp_subvp_cont_small",
         "ncsnv2_ve_small", "ddpm_vp_small"]
CIFAR = "configs/ve/cifar10_ncsnpp_continuous.py"


def _tuples(v):
    if isinstance(v, dict):
        return {k: _tuples(x) for k, x in v.items()}
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def load_config(name: str) -> ml_collections.ConfigDict:
    """A reference case name (its official config from tests/data/<case>.json) or a config file."""
    if name.endswith(".py"):
        return config_lib.load_config(ROOT / name)
    meta = json.loads((ROOT / "tests" / "data" / f"{name}.json").read_text())
    return ml_collections.ConfigDict(_tuples(meta["config"]))


def bench(name: str, batch_size: int, repeats: int) -> dict:
    config = load_config(name)
    config.training.batch_size = batch_size
    config.training.n_jitted_steps = 1
    mesh = parallel.make_mesh()
    model = mutils.create_model(config)
    state = train.create_train_state(config, mesh)
    train_step, _ = train.get_train_fns(config, model, mesh)
    shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
    x = jax.random.uniform(jax.random.PRNGKey(0), shape)
    xs = jax.device_put(x[None], parallel.batch_sharding(mesh, 1))

    sde, _ = sde_lib.get_sde(config)
    t = config.training
    _, loss_fn = losses.get_loss_fn(sde, model, True, t.reduce_mean, t.continuous,
                                    t.likelihood_weighting)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn),
                      in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh),
                                    parallel.replicated(mesh)))
    xb = jax.device_put(x, parallel.batch_sharding(mesh))
    rng = jax.random.PRNGKey(1)
    params = jax.tree.map(jnp.copy, state.params)  # the step donates `state`

    t0 = time.perf_counter()
    jax.block_until_ready(grad_fn(params, xb, rng))
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = train_step(holder["state"], xs)
        return metrics

    jax.block_until_ready(one_step())
    fwd_bwd, step = timing.medians([lambda: grad_fn(params, xb, rng), one_step], repeats)
    return {"model": name, "batch": batch_size, "steps_per_s": 1 / step,
            "images_per_s": batch_size / step, "step_ms": 1e3 * step,
            "fwd_bwd_ms": 1e3 * fwd_bwd, "ratio": step / fwd_bwd, "compile_s": compile_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=CASES)
    parser.add_argument("--batch_sizes", nargs="*", type=int, default=[8, 32])
    parser.add_argument("--cifar_batch", type=int, default=8, help="0 skips the CIFAR-10 network")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs = [(CIFAR, args.cifar_batch)] if args.cifar_batch else []
    runs += [(c, b) for c in args.cases for b in args.batch_sizes]
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
          f"{os.cpu_count()} CPU cores")
    header = f"{'model':<42} {'batch':>5} {'steps/s':>8} {'img/s':>8} {'step ms':>9} " \
             f"{'fwd+bwd ms':>10} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name, batch in runs:
        r = bench(name, batch, args.repeats)
        print(f"{r['model']:<42} {r['batch']:>5} {r['steps_per_s']:>8.2f} "
              f"{r['images_per_s']:>8.1f} "
              f"{r['step_ms']:>9.1f} {r['fwd_bwd_ms']:>10.1f} {r['ratio']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
