"""Baselines for the embedded default's test bits/dim and sample quality
(README, configs/digits.py).

    python benchmarks/digits_baselines.py                            # bits/dim, ~30 s
    python benchmarks/digits_baselines.py --fid --workdir workdir/digits  # + FID/KID table

With `--fid` (about 4 min on a 2-core CPU: 900 images through Inception): FID and KID against the
test split's Inception statistics (the file the main job's eval reads, computed if missing) of
300 train digits (the floor: real data, as many images as the model's samples), 300 samples of
the per-pixel Gaussian below (a bad model; clipped to [0, 1] and quantized as samples are), and
the main job's samples (`W/eval/ckpt_<step>.json`, written by its final evaluation).

Same convention as `--mode likelihood`: uniformly dequantized pixels x = (k + u) / 256 in [0, 1],
scaled to y = 2x - 1, bits/dim = -log2 p(y) / D + 7 (the +7 converts the density on [-1, 1] to
256 bins per pixel). Prints the per-pixel Gaussian fitted to the dequantized train split
(5 dequantizations) on the test split (5 dequantizations), and the uniform model (8 bits/dim).
"""
import argparse
import glob
import json
import os

import numpy as np
from sklearn.datasets import load_digits

from configs import digits as digits_config
from score_jax import datasets, digits, metrics

REPEATS = 5


def dequantized(split: str, seed: int) -> np.ndarray:
    """The whole split, dequantized with `seed`, in [-1, 1], float64 (N, 8, 8, 1)."""
    config = digits_config.get_config()
    config.seed = seed
    batches = datasets.get_dataset(config, split=split, evaluation=True, batch_size=1,
                                   uniform_dequantization=True)
    return 2 * np.concatenate([b["image"] for b in batches]).astype(np.float64) - 1


def sample_quality(mu, var, workdir):
    """FID/KID rows against the test statistics."""
    config = digits_config.get_config()
    reference = metrics.reference_stats(config)
    inception_fn = metrics.inception_fn(config)
    rng = np.random.RandomState(0)
    n = int(config.eval.num_samples)
    train = digits.to_uint8(load_digits().images)[digits.split_indices()["train"]]
    gaussian = (rng.normal(mu, np.sqrt(var), (n,) + mu.shape) + 1) / 2
    rows = [("300 train digits (floor)",
             train[rng.choice(len(train), n, replace=False), ..., None]),
            ("per-pixel Gaussian", metrics.samples_to_uint8(gaussian))]
    print(f"\n{'vs the 300 test digits':26s} {'FID':>8s} {'KID':>18s}")
    for name, images in rows:
        pool = inception_fn(images)["pool_3"]
        fid = metrics.frechet_distance(*metrics.feature_stats(pool), reference["mu"],
                                       reference["sigma"])
        kid, kid_std = metrics.kernel_inception_distance(
            pool, reference["pool_3"], config.eval.kid_subsets, config.eval.kid_subset_size,
            seed=config.seed)
        print(f"{name:26s} {fid:8.2f} {kid:9.4f} +- {kid_std:.4f}")
    if workdir:
        for path in sorted(glob.glob(os.path.join(workdir, "eval", "ckpt_*.json"))):
            r = json.load(open(path))
            if "fid" in r:
                print(f"{'main job, step ' + str(r['step']):26s} {r['fid']:8.2f} "
                      f"{r['kid']:9.4f} +- {r['kid_std']:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fid", action="store_true", help="also the FID/KID table")
    parser.add_argument("--workdir", default=None, help="the main job's workdir")
    args = parser.parse_args()
    train = np.concatenate([dequantized("train", s) for s in range(REPEATS)])
    mu, var = train.mean(0), train.var(0)
    bpds = []
    for seed in range(REPEATS):
        y = dequantized("eval", seed)
        logp = -0.5 * (np.log(2 * np.pi * var) + (y - mu) ** 2 / var)
        bpds.append(-logp.reshape(len(y), -1).sum(1) / np.log(2) / y[0].size + 7)
    b = np.concatenate(bpds)
    print(f"train {len(train) // REPEATS} images, test {len(b) // REPEATS} images, "
          f"x {REPEATS} dequantizations each")
    print(f"{'model':22s} {'test bits/dim':>14s}")
    print(f"{'uniform':22s} {8.0:14.3f}")
    print(f"{'per-pixel Gaussian':22s} {b.mean():8.3f} +- {b.std() / np.sqrt(len(b)):.3f}")
    if args.fid:
        sample_quality(mu, var, args.workdir)


if __name__ == "__main__":
    main()
