"""Where a network's forward pass spends its time on XLA:CPU, by kind of layer.

    python benchmarks/profile_forward.py                                   # NCSN++ (VE), nf=32
    python benchmarks/profile_forward.py --config configs/vp/cifar10_ddpmpp_continuous.py \
        --batch 64 --top 20

Traces `--repeats` jitted forward passes with `jax.profiler`, reads the trace back
(`jax.profiler.ProfileData`) and sums the time of every XLA thunk (a fusion, a convolution, a dot)
per category, named from the source of the thunk's root operation (its `op_name` metadata):
convolutions, FIR resampling, GroupNorm, attention, concatenations, the time embedding, and
`other:<op>`. Times are summed over XLA's threads, so they add up to more than the wall time.
`--top` also lists the slowest single thunks.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import pathlib
import re
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.models import utils as mutils

# (category, pattern in the op_name), first match wins.
CATEGORIES = [
    ("FIR resampling", r"_resample/|Conv2d_0/(pad|slice|mul|add)|upfirdn|"
                       r"(Up|Down)sample_\d+/(pad|slice|mul|add)"),
    ("convolution", r"conv_general_dilated"),
    ("attention", r"Attn"),
    ("GroupNorm", r"GroupNorm"),
    ("time embedding", r"Dense|GaussianFourier|sin|cos"),
    ("concatenate", r"concatenate"),
]


def thunk_ops(compiled_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (shape, op_name)} of the compiled HLO's instructions."""
    ops = {}
    for line in compiled_text.splitlines():
        m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+) .*?op_name="([^"]*)"', line)
        if m:
            ops[m.group(1)] = (m.group(2), m.group(3))
    return ops


def category(op_name: str) -> str:
    for name, pattern in CATEGORIES:
        if re.search(pattern, op_name):
            return name
    return "other:" + op_name.split("/")[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ve/cifar10_ncsnpp_continuous.py")
    parser.add_argument("--nf", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()

    module = ".".join(pathlib.Path(args.config).with_suffix("").parts)
    config = importlib.import_module(module).get_config()
    config.model.nf = args.nf
    model = mutils.create_model(config)
    template = jax.eval_shape(lambda: mutils.init_model(jax.random.PRNGKey(0), config))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), template)
    size, channels = config.data.image_size, config.data.num_channels
    x = jnp.asarray(rng.uniform(size=(args.batch, size, size, channels)), jnp.float32)
    labels = (jnp.linspace(0.5, 20.0, args.batch) if config.model.embedding_type == "fourier"
              else jnp.linspace(1.0, 999.0, args.batch))
    forward = jax.jit(lambda v, x, l: model.apply(v, x, l, train=False))
    ops = thunk_ops(forward.lower(variables, x, labels).compile().as_text())
    forward(variables, x, labels).block_until_ready()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        forward(variables, x, labels).block_until_ready()
        times.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(args.repeats):
                forward(variables, x, labels).block_until_ready()
        trace = next(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
        profile = jax.profiler.ProfileData.from_file(str(trace))
    per_category, per_thunk = collections.Counter(), collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in ops:
                    per_category[category(ops[event.name][1])] += event.duration_ns
                    per_thunk[event.name] += event.duration_ns
    total = sum(per_category.values())
    print(f"# {args.config} nf={args.nf} batch {args.batch}, jax {jax.__version__} "
          f"({jax.default_backend()}): forward {1e3 * float(np.median(times)):.1f} ms (median of "
          f"{args.repeats}); thunk time summed over threads, per forward pass")
    print("| category | ms | share |\n|---|---:|---:|")
    for name, ns in per_category.most_common():
        print(f"| {name} | {ns / args.repeats / 1e6:.2f} | {100 * ns / total:.1f}% |")
    if args.top:
        print("\n| thunk | shape | op | ms |\n|---|---|---|---:|")
        for name, ns in per_thunk.most_common(args.top):
            shape, op_name = ops[name]
            print(f"| {name} | {shape} | {op_name.split('/', 1)[-1]} | "
                  f"{ns / args.repeats / 1e6:.2f} |")


if __name__ == "__main__":
    main()
