"""Sample quality: Inception features, FID, KID, IS (on the host, float64) and statistics files:
`.npz` with `pool_3` (N, 2048) and optionally `mu` (2048,), `sigma` (2048, 2048), `logits`
(N, 1008), the format of score_sde's files."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import inception, parallel, utils


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of TF1's bilinear resize, no half-pixel centres (i n_in / n_out)."""
    src = np.arange(n_out) * (n_in / n_out)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m.astype(np.float32)


def preprocess(images: jax.Array) -> jax.Array:
    """uint8 (B, H, W, 1 or 3) -> float32 (B, 299, 299, 3): TF1 bilinear resize, v / 128 - 1."""
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    _, h, w, _ = x.shape
    # tfgan's resize (TF1, no half-pixel centres), so FIDs compare with the paper's.
    if (h, w) != (inception.SIZE, inception.SIZE):
        hp = jax.lax.Precision.HIGHEST
        x = jnp.einsum("oh,bhwc->bowc", resize_matrix(h, inception.SIZE), x, precision=hp)
        x = jnp.einsum("pw,bowc->bopc", resize_matrix(w, inception.SIZE), x, precision=hp)
    return x / 128.0 - 1.0


def check_images(images) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images have dtype {images.dtype} and shape {tuple(images.shape)}; "
                         "expected uint8 (B, H, W, 1 or 3)")


def get_inception_fn(weights: str | None = None, batch_size: int = 100):
    """`fn(images uint8 (B, H, W, 3 or 1)) -> {'pool_3': (B, 2048), 'logits': (B, 1008) or None}`
    (float32 numpy), jitted on all devices in `batch_size` chunks; same images on every process."""
    flat, has_logits = inception.load_params(weights)
    mesh = parallel.make_mesh()
    n_dev = jax.device_count()
    params = jax.device_put(inception.unflatten(flat), parallel.replicated(mesh))
    model = inception.InceptionV3(logits=has_logits)
    sharding = parallel.batch_sharding(mesh)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, preprocess(x)))

    def inception_fn(images) -> dict:
        images = np.asarray(images)
        check_images(images)
        chunk = -(-min(batch_size, max(len(images), 1)) // n_dev) * n_dev
        outs = []
        for start in range(0, len(images), chunk):
            part = images[start:start + chunk]
            padded = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:],
                                                    np.uint8)])
            # Every process holds the same images: each puts its devices' share.
            outs.append((len(part), forward(params, jax.device_put(padded, sharding))))
        outs = [(n, [parallel.to_host(o) for o in out if o is not None]) for n, out in outs]
        pool = np.concatenate([o[0][:n] for n, o in outs]) if outs else np.zeros((0, 2048))
        logits = np.concatenate([o[1][:n] for n, o in outs]) if has_logits and outs else None
        return {"pool_3": pool.astype(np.float32),
                "logits": None if logits is None else logits.astype(np.float32)}

    return inception_fn


def samples_to_uint8(samples: np.ndarray) -> np.ndarray:
    """Samples in [0, 1] -> uint8: clip(x * 255, 0, 255), truncated."""
    return np.clip(np.asarray(samples) * 255.0, 0, 255).astype(np.uint8)


def feature_stats(pool_3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), sigma (D, D)) in float64: the mean and the unbiased covariance."""
    f = np.asarray(pool_3, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def save_stats(path: str, pool_3: np.ndarray) -> dict:
    """Writes `{mu, sigma, pool_3}` of `pool_3` (N, 2048) to `path` atomically; returns them."""
    mu, sigma = feature_stats(pool_3)
    stats = {"mu": mu, "sigma": sigma, "pool_3": np.asarray(pool_3, np.float32)}
    with utils.atomic_path(path) as tmp:
        np.savez(tmp, **stats)
    return stats


def load_stats(path: str) -> dict:
    """`{mu, sigma, pool_3[, logits]}` of a statistics file; ValueError naming the file and key
    without `pool_3` (N >= 2, 2048) or with misshaped mu/sigma."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID statistics file {path!r} does not exist; write it with "
                                "--mode fid_stats")
    with np.load(path) as f:
        stats = dict(f)
    pool = stats.get("pool_3")
    if pool is None or pool.ndim != 2 or pool.shape[1] != inception.NUM_FEATURES or len(pool) < 2:
        got = "missing" if pool is None else f"shape {pool.shape}"
        raise ValueError(f"{path}: 'pool_3' is {got}; expected (N >= 2, "
                         f"{inception.NUM_FEATURES}) Inception features (keys: {sorted(stats)})")
    if "mu" not in stats or "sigma" not in stats:
        stats["mu"], stats["sigma"] = feature_stats(pool)
    d = inception.NUM_FEATURES
    for key, shape in (("mu", (d,)), ("sigma", (d, d))):
        if stats[key].shape != shape:
            raise ValueError(f"{path}: {key!r} has shape {stats[key].shape}, expected {shape}")
    return stats


def _psd_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """eigh of a symmetric PSD matrix, eigenvalues below max * D * eps set to 0."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    # Rounding noise: its square roots would add up.
    tol = max(w.max(), 0.0) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0), v


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)) in float64; finite and
    real also for singular covariances. Raises ValueError on mismatched shapes."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[-1]
    for name, value, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d)),
                               ("sigma2", sigma2, (d, d))):
        if value.shape != shape:
            raise ValueError(f"{name} has shape {value.shape}, expected {shape}")
    # tr (sigma1 sigma2)^(1/2) from the spectrum of the symmetric sigma1^(1/2) sigma2 sigma1^(1/2):
    # stays real where sqrtm of the non-symmetric product gives NaN or complex values.
    w, v = _psd_eigh(sigma1)
    root = (v * np.sqrt(w)) @ v.T
    eig, _ = _psd_eigh(root @ sigma2 @ root)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eig).sum())


def _check_features(name, f, dim=None):
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or (dim is not None and f.shape[1] != dim):
        raise ValueError(f"{name} has shape {f.shape}; expected (N, {dim or 'D'})")
    return f


def kernel_inception_distance(f1, f2, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """(mean, std) over `subsets` of the unbiased MMD^2, kernel (x.y / D + 1)^3, of
    min(subset_size, N1, N2) rows of `f1` (N1, D), `f2` (N2, D) drawn without replacement."""
    f1 = _check_features("f1", f1)
    f2 = _check_features("f2", f2, f1.shape[1])
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 features per set; got {len(f1)} and {len(f2)}")
    if m == len(f1) == len(f2):
        subsets = 1  # every subset is both whole sets: one value, std 0
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` parts of exp(E_x KL(p(y|x) || p(y))), p = softmax(logits)."""
    logits = _check_features("logits", logits)
    if not 1 <= splits <= len(logits):
        raise ValueError(f"splits={splits} must be between 1 and the number of logits "
                         f"({len(logits)})")
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    scores = []
    for part in np.array_split(log_p, splits):
        log_q = np.log(np.exp(part).mean(axis=0))
        scores.append(np.exp((np.exp(part) * (part - log_q)).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# eval.fid_stats_split / eval.bpd_dataset names -> the dataset's split.
SPLITS = {"test": "eval", "eval": "eval", "train": "train"}


def stats_path(config) -> str:
    """`eval.fid_stats_file`, or `<cache>/stats/<dataset>[_<category>]_<size>_<split>.npz`
    (`inception.cache_dir`, split `eval.fid_stats_split`)."""
    if config.eval.get("fid_stats_file"):
        return os.path.expanduser(config.eval.fid_stats_file)
    parts = [config.data.dataset.lower(), config.data.get("category"), config.data.image_size,
             config.eval.get("fid_stats_split", "train")]
    name = "_".join(str(p) for p in parts if p)
    return os.path.join(inception.cache_dir(), "stats", f"{name}.npz")


def inception_fn(config, batch_size: int | None = None):
    """`get_inception_fn` with the config's `eval.inception_weights`."""
    weights = config.eval.get("inception_weights") or None
    if batch_size is None:
        return get_inception_fn(weights)
    return get_inception_fn(weights, batch_size=batch_size)


def dataset_stats(config) -> dict:
    """Inception features of every image of `eval.fid_stats_split` of the config's dataset, saved
    (first process) to `stats_path(config)`. Returns `{'path', 'num_images'}`."""
    from tqdm import tqdm

    from score_jax import datasets

    name = str(config.eval.get("fid_stats_split", "train"))
    split = SPLITS.get(name)
    if split is None:
        raise ValueError(f"eval.fid_stats_split={name!r}; valid: {sorted(SPLITS)}")
    fn = inception_fn(config)
    # Every image on every process, in batches of one per device (the last device_count - 1 at
    # most are dropped).
    batches = datasets.get_dataset(config, split=split, evaluation=True,
                                   batch_size=jax.device_count(), shard_index=0, shard_count=1,
                                   uniform_dequantization=False)
    pending, features = [], []
    for batch in tqdm(batches, desc=f"fid_stats ({name})", unit="batch"):
        pending.append(np.round(batch["image"] * 255).astype(np.uint8))
        if sum(map(len, pending)) >= 500:
            features.append(fn(np.concatenate(pending))["pool_3"])
            pending = []
    if pending:
        features.append(fn(np.concatenate(pending))["pool_3"])
    path = stats_path(config)
    pool = np.concatenate(features)
    if jax.process_index() == 0:
        save_stats(path, pool)
    return {"path": path, "num_images": int(len(pool))}


def reference_stats(config) -> dict:
    """The reference statistics; the default file is made on first use, a given one must exist."""
    path = stats_path(config)
    if not os.path.exists(path) and not config.eval.get("fid_stats_file"):
        dataset_stats(config)
    return load_stats(path)


def fid_kid(pool: np.ndarray, reference: dict, config) -> dict:
    """{'fid', 'kid', 'kid_std'} of sample features `pool` (N, 2048) against `reference`
    (`load_stats`); KID over `eval.kid_subsets` subsets of `eval.kid_subset_size`."""
    kid, kid_std = kernel_inception_distance(
        pool, reference["pool_3"], int(config.eval.get("kid_subsets", 100)),
        int(config.eval.get("kid_subset_size", 1000)), seed=int(config.seed))
    fid = frechet_distance(*feature_stats(pool), reference["mu"], reference["sigma"])
    return {"fid": float(fid), "kid": float(kid), "kid_std": float(kid_std)}
