"""Inpainting and colorization with the closed-form Gaussian score: the known part is kept, the
rest follows the conditional distribution (independent pixels => the data marginals)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sampling import data_params, variables

from score_jax import controllable_generation as cg
from score_jax import sde as sde_lib

from analytic import AnalyticScore, analytic_variables

identity = lambda x: x
BATCH = 256


def moments_ok(x, mu, sd):
    """Per-value mean within 4.5 standard errors; variance ratio within 0.4 each, 0.1 on average."""
    x = np.asarray(x, np.float64)
    assert np.abs((x.mean(0) - mu) / (sd / np.sqrt(len(x)))).max() < 4.5
    ratio = x.var(0) / sd**2
    assert np.abs(ratio - 1).max() < 0.4 and abs(ratio.mean() - 1) < 0.1, ratio


def test_inpainting_keeps_known_pixels_and_samples_the_rest():
    sde = sde_lib.VESDE(N=500)
    mu, sd = data_params("diag")
    inpaint = cg.get_pc_inpainter(sde, AnalyticScore(sde), "reverse_diffusion", "langevin",
                                  identity, 0.16, continuous=True)
    rng = np.random.default_rng(0)
    data = (mu + sd * rng.standard_normal((BATCH,) + mu.shape)).astype(np.float32)
    mask = np.zeros(mu.shape, np.float32)
    mask[:, :2] = 1.0  # left half known
    x = np.asarray(inpaint(jax.random.key(0), variables("diag"), data, mask))
    # VE: the known part of x_mean is the marginal mean, i.e. the data itself.
    np.testing.assert_array_equal(x[:, :, :2], data[:, :, :2])
    moments_ok(x[:, :, 2:], mu[:, 2:], sd[:, 2:])


def test_colorization_keeps_gray_channel_and_samples_colours():
    """Per-pixel sd equal over RGB keeps the covariance isotropic in the orthogonal decoupled
    space, so the colour channels are independent of the gray one: N((mu M)[1:], sd^2)."""
    sde = sde_lib.VESDE(N=500)
    mu1, sd1 = data_params("diag")
    mu = np.concatenate([mu1, -mu1, 0.5 * mu1], -1)
    sd = np.repeat(sd1, 3, -1)
    rng = np.random.default_rng(1)
    images = (mu + sd * rng.standard_normal((BATCH,) + mu.shape)).astype(np.float32)
    gray = np.repeat(images.mean(-1, keepdims=True), 3, -1)
    colorize = cg.get_pc_colorizer(sde, AnalyticScore(sde), "reverse_diffusion", "langevin",
                                   identity, 0.16, continuous=True)
    x = colorize(jax.random.key(0), analytic_variables(mu, sd), gray)
    x_dec, gray_dec = np.asarray(cg.decouple(x)), np.asarray(cg.decouple(gray))
    np.testing.assert_allclose(x_dec[..., 0], gray_dec[..., 0], rtol=0, atol=1e-5)
    moments_ok(x_dec[..., 1:], (mu @ cg.M)[..., 1:], sd[..., 1:])


def test_colour_transform():
    np.testing.assert_allclose(cg.M @ cg.M.T, np.eye(3), atol=1e-6)
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 3))
    np.testing.assert_allclose(cg.couple(cg.decouple(x)), x, atol=1e-6)
    gray = jnp.ones((1, 1, 1, 3)) * 0.3
    np.testing.assert_allclose(cg.decouple(gray)[..., 1:], 0, atol=1e-6)
    np.testing.assert_array_equal(cg.get_mask(x)[..., 0], 1)
    np.testing.assert_array_equal(cg.get_mask(x)[..., 1:], 0)


def test_bad_input():
    sde = sde_lib.subVPSDE()
    with pytest.raises(ValueError, match="unknown corrector"):
        cg.get_pc_inpainter(sde, AnalyticScore(sde), "none", "gibbs", identity, 0.16)
    with pytest.raises(ValueError, match="not defined for subVPSDE"):
        cg.get_pc_colorizer(sde, AnalyticScore(sde), "ancestral_sampling", "none", identity, 0.16)
    colorize = cg.get_pc_colorizer(sde, AnalyticScore(sde), "none", "none", identity, 0.16)
    with pytest.raises(ValueError, match="needs RGB images"):
        colorize(jax.random.key(0), variables("diag"), jnp.zeros((2, 4, 4, 1)))
