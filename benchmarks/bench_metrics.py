"""Inception throughput and where the time of an `eval` with FID goes.

    python benchmarks/bench_metrics.py                          # Inception images/s only
    python benchmarks/bench_metrics.py --workdir workdir/digits # + the main job's eval
    python benchmarks/bench_metrics.py --workdir workdir/digits --num_samples 100  # 1 round

Prints the FID Inception network's images/s at `--batch` (default 50) for 8x8x1 (digits, resized
to 299) and 32x32x3 (CIFAR-10) uint8 inputs, median of `--repeats` calls after compilation. With
`--workdir` (a trained main job, configs/digits.py), it runs `score_jax.evaluate.sample_quality`
(the `eval` mode's FID/KID part: `eval.num_samples` samples, their features, FID/KID) on that
run's last snapshot in a scratch copy of the workdir, the reference statistics already cached, and
prints the wall time split into sampling, Inception and the rest (writing files, statistics); the
goal is rest <= 10% of the total.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from configs import digits as digits_config
from score_jax import evaluate, metrics


def throughput(batch: int, repeats: int) -> None:
    fn = metrics.get_inception_fn(batch_size=batch)
    print(f"{'input':>10s} {'batch':>6s} {'images/s':>9s}   ({jax.device_count()} "
          f"{jax.devices()[0].platform} device(s), jax {jax.__version__})")
    rng = np.random.RandomState(0)
    for shape in ((8, 8, 1), (32, 32, 3)):
        images = rng.randint(0, 256, (batch,) + shape).astype(np.uint8)
        fn(images)  # compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(images)
            times.append(time.perf_counter() - start)
        print(f"{'x'.join(map(str, shape)):>10s} {batch:6d} "
              f"{batch / statistics.median(times):9.2f}")


class Timed:
    """Wraps a function and sums the wall time of its calls (which return host arrays)."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args):
        start = time.perf_counter()
        out = self.fn(*args)
        self.seconds += time.perf_counter() - start
        return out


def eval_split(workdir: str, num_samples: int | None) -> None:
    config = digits_config.get_config()
    if num_samples:
        config.eval.num_samples = num_samples
    step = evaluate.eval_steps(config, workdir)[-1]
    metrics.reference_stats(config)  # computed once, outside the timing
    with tempfile.TemporaryDirectory() as scratch:
        os.symlink(os.path.abspath(os.path.join(workdir, "checkpoints")),
                   os.path.join(scratch, "checkpoints"))
        sde, eps, model, variables, step, mesh = evaluate.restore(config, scratch, step)
        draw = Timed(evaluate.draw_fn(config, sde, eps, model, variables, step, mesh))
        make_inception = metrics.get_inception_fn
        inception_calls = []

        def timed_inception(*args, **kwargs):
            inception_calls.append(Timed(make_inception(*args, **kwargs)))
            return inception_calls[-1]

        metrics.get_inception_fn = timed_inception
        start = time.perf_counter()
        result = evaluate.sample_quality(config, step, draw, os.path.join(scratch, "features"),
                                         os.path.join(scratch, "samples"))
        total = time.perf_counter() - start
        metrics.get_inception_fn = make_inception
    network = draw.seconds + sum(c.seconds for c in inception_calls)
    print(f"\neval of the main job (step {step}, {result['num_samples']} samples, "
          f"FID {result['fid']:.2f}, KID {result['kid']:.4f}):")
    print(f"{'part':>12s} {'seconds':>8s} {'share':>6s}")
    for name, seconds in (("sampling", draw.seconds),
                          ("Inception", network - draw.seconds),
                          ("rest", total - network), ("total", total)):
        print(f"{name:>12s} {seconds:8.1f} {seconds / total:6.1%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="a trained main job (configs/digits.py)")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="eval.num_samples for the eval (default: the config's, 300)")
    args = parser.parse_args()
    throughput(args.batch, args.repeats)
    if args.workdir:
        eval_split(args.workdir, args.num_samples)


if __name__ == "__main__":
    main()
