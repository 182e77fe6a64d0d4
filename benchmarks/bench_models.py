"""Parameter counts and forward time of the CIFAR-10 NCSN++ / DDPM++ / DDPM networks.

    python benchmarks/bench_models.py [--batch 8] [--repeats 3] [--filter ddpm]

For every `configs/**/cifar10*.py` (and `configs/vp/ddpm/cifar10*.py`) whose model is `ncsnpp` or
`ddpm`, prints the parameter count of our network (which the converter maps one-to-one onto the
official PyTorch state dict: for the small reference cases it equals the official `n_params`, and
this script asserts that first) and the time of one jitted forward pass at the given batch on the
default JAX backend (compile time separately). Networks that differ only in the SDE are timed once.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

from score_jax.models import utils as mutils

REFERENCE_CASES = ["ncsnpp_ve_cont_small", "ddpmpp_vp_cont_small", "ddpmpp_subvp_cont_small",
                   "ddpm_vp_small"]


def count_params(config) -> int:
    variables = jax.eval_shape(lambda: mutils.init_model(jax.random.PRNGKey(0), config))
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables["params"])))


def check_reference_counts() -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    import reference as refcases  # a test fixture

    for case in REFERENCE_CASES:
        ours, official = (count_params(refcases.case_config(case)),
                          refcases.case_meta(case)["n_params"])
        assert ours == official, f"{case}: {ours} parameters, official {official}"
        print(f"# {case}: {ours} parameters = official n_params")


def cifar10_configs(name_filter: str):
    for path in sorted((REPO / "configs").rglob("cifar10*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        config = importlib.import_module(module).get_config()
        if config.model.name in ("ncsnpp", "ddpm") and name_filter in str(path):
            yield str(path.relative_to(REPO)), config


def labels_for(config, batch):
    if config.model.name == "ncsnpp" and config.model.embedding_type == "fourier":
        return jnp.linspace(0.5, 20.0, batch)
    if config.model.scale_by_sigma:
        return jnp.arange(batch, dtype=jnp.int32)
    return jnp.linspace(1.0, 999.0, batch)


def time_forward(config, batch: int, repeats: int) -> tuple[float, float]:
    """(compile seconds, best forward seconds) of the jitted network at `batch`."""
    model = mutils.create_model(config)
    template = jax.eval_shape(lambda: mutils.init_model(jax.random.PRNGKey(0), config))
    rng = np.random.default_rng(0)  # random weights without compiling the initialisers
    variables = jax.tree_util.tree_map(
        lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), template)
    size, channels = config.data.image_size, config.data.num_channels
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, size, size, channels))
    labels = labels_for(config, batch)
    start = time.perf_counter()
    forward = jax.jit(lambda v, x, l: model.apply(v, x, l, train=False)).lower(
        variables, x, labels).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(forward(variables, x, labels))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(forward(variables, x, labels))
        times.append(time.perf_counter() - start)
    return compile_s, min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--filter", default="", help="only config paths containing this")
    args = parser.parse_args()
    check_reference_counts()
    print(f"# backend {jax.default_backend()}, batch {args.batch}")
    print("| config | model | parameters | compile (s) | forward (s) |")
    print("|---|---|---:|---:|---:|")
    timed = {}
    for path, config in cifar10_configs(args.filter):
        key = (config.model.to_json(), config.data.centered)
        if key not in timed:
            timed[key] = time_forward(config, args.batch, args.repeats)
        compile_s, forward_s = timed[key]
        print(f"| {path} | {config.model.name} | {count_params(config):,} | {compile_s:.1f} | "
              f"{forward_s:.3f} |", flush=True)


if __name__ == "__main__":
    main()
