"""One 3x3 convolution under XLA:CPU flag sets, next to PyTorch's, on this CPU.

    python benchmarks/xla_conv_flags.py
    python benchmarks/xla_conv_flags.py --shapes 8x32x64,64x32x64 --repeats 20

Each flag set runs in its own process (XLA reads XLA_FLAGS once, when jax starts its CPU
backend) with `SCORE_JAX_KEEP_XLA_FLAGS=1`, so nothing but the row's flags applies; the
`score_jax` row is what `import score_jax` sets (README, Install). Times are medians of
`--repeats` jitted NHWC convolutions (batch x size x size x channels -> channels, 'SAME'), in ms;
torch runs `F.conv2d` on NCHW with `--threads` threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from score_jax import KEEP_XLA_FLAGS_ENV

FLAG_SETS = {
    "jax default (YNNPACK convolutions)": "",
    "score_jax (ynn_fusion_type=-individual_convolution)":
        "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "YNNPACK off (ynn_fusion_type=)": "--xla_cpu_experimental_ynn_fusion_type=",
    "YNNPACK and XNNPACK off":
        "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=false",
    "oneDNN (use_onednn)": "--xla_cpu_use_onednn=true",
    "oneDNN custom call":
        "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
}

_CHILD = r"""
import json, statistics, sys, time
import numpy as np
shapes, repeats, which, threads = json.loads(sys.argv[1])

def median_ms(fn):
    fn(); fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)

rng = np.random.default_rng(0)
out = []
for b, size, c in shapes:
    x = rng.normal(size=(b, size, size, c)).astype(np.float32)
    w = (rng.normal(size=(3, 3, c, c)) / (3 * c ** 0.5)).astype(np.float32)
    if which == "torch":
        import torch
        torch.set_num_threads(threads)
        xt, wt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(
            w.transpose(3, 2, 0, 1).copy())
        with torch.no_grad():
            out.append(median_ms(lambda: torch.nn.functional.conv2d(xt, wt, padding=1)))
    else:
        import jax, jax.numpy as jnp
        conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        out.append(median_ms(lambda: conv(xj, wj).block_until_ready()))
print(json.dumps(out))
"""


def run(which: str, flags: str, args) -> list[float]:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", **{KEEP_XLA_FLAGS_ENV: "1"})
    spec = json.dumps([args.shapes, args.repeats, which, args.threads])
    proc = subprocess.run([sys.executable, "-c", _CHILD, spec], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"{which} with XLA_FLAGS={flags!r} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8x32x64,8x16x64,64x32x64",
                        help="batch x size x channels, comma-separated")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.shapes = [[int(v) for v in s.split("x")] for s in args.shapes.split(",")]
    names = ["x".join(map(str, s)) for s in args.shapes]
    print(f"| XLA:CPU flags | {' | '.join(f'{n} (ms)' for n in names)} |")
    print("|---|" + "---:|" * len(names))
    for label, flags in FLAG_SETS.items():
        times = run("jax", flags, args)
        print(f"| {label} | {' | '.join(f'{t:.2f}' for t in times)} |", flush=True)
    times = run("torch", "", args)
    print(f"| torch F.conv2d, {args.threads} threads | {' | '.join(f'{t:.2f}' for t in times)} |")


if __name__ == "__main__":
    main()
