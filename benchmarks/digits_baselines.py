"""Baselines for the embedded default's test bits/dim (README, configs/digits.py).

    python benchmarks/digits_baselines.py        # ~30 s on a 2-core CPU

Same convention as `--mode likelihood`: uniformly dequantized pixels x = (k + u) / 256 in [0, 1],
scaled to y = 2x - 1, bits/dim = -log2 p(y) / D + 7 (the +7 converts the density on [-1, 1] to
256 bins per pixel). Prints the per-pixel Gaussian fitted to the dequantized train split
(5 dequantizations) on the test split (5 dequantizations), and the uniform model (8 bits/dim).
"""
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import digits as digits_config  # noqa: E402
from score_jax import datasets  # noqa: E402

REPEATS = 5


def dequantized(split: str, seed: int) -> np.ndarray:
    """The whole split, dequantized with `seed`, in [-1, 1], float64 (N, 8, 8, 1)."""
    config = digits_config.get_config()
    config.seed = seed
    batches = datasets.get_dataset(config, split=split, evaluation=True, batch_size=1,
                                   uniform_dequantization=True)
    return 2 * np.concatenate([b["image"] for b in batches]).astype(np.float64) - 1


def main():
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


if __name__ == "__main__":
    main()
