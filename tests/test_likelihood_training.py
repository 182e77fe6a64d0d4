"""Likelihood training and bounds: importance-sampled t for the likelihood-weighted loss (against
its closed-form density and a quadrature of the loss's expectation), the ELBO against the exact
likelihood of Gaussian data, and the variational dequantizer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analytic import AnalyticScore, analytic_variables
from score_jax import losses
from score_jax import sde as sde_lib

EPS = 1e-5
SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}


def _log_grid(sde, n=400_001):
    """A float64 grid of t on [EPS, T], uniform in log t (the weights peak at t -> 0)."""
    return np.exp(np.linspace(np.log(EPS), np.log(sde.T), n))


def _weight(sde, t):
    """g(t)^2 / std(t)^2 in float64 from the SDE's diffusion and marginal std (not its log-SNR)."""
    t32 = jnp.asarray(t, jnp.float32)
    g = np.asarray(sde.sde(jnp.zeros((len(t), 1)), t32)[1], np.float64)
    std = np.asarray(sde.marginal_prob(jnp.zeros((len(t), 1)), t32)[1], np.float64)
    return g**2 / std**2


def _trapezoid(y, t):
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(t)))


@pytest.mark.parametrize("name", list(SDES))
def test_importance_density_is_g2_over_std2(name):
    """Z equals the quadrature of g^2/std^2 (1e-3 relative), and 200k sampled t follow its CDF
    (Kolmogorov-Smirnov distance < 0.006, 2.7x the 1% critical value of 0.0036)."""
    sde = SDES[name]()
    t = _log_grid(sde)
    w = _weight(sde, t)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(t))])
    z = losses.likelihood_importance_normalizer(sde, EPS)
    np.testing.assert_allclose(z, cdf[-1], rtol=1e-3)
    u = jax.random.uniform(jax.random.PRNGKey(0), (200_000,))
    samples = np.sort(np.asarray(losses.importance_sampled_time(sde, u, EPS), np.float64))
    assert samples.min() >= EPS and samples.max() <= sde.T
    probe = t[:: len(t) // 200]
    empirical = np.searchsorted(samples, probe) / len(samples)
    assert np.max(np.abs(empirical - cdf[:: len(t) // 200] / cdf[-1])) < 6e-3
    # A histogram in log t against the closed-form density (bins holding >= 1% of the mass).
    edges = np.exp(np.linspace(np.log(EPS), 0.0, 21))
    counts = np.histogram(samples, edges)[0] / len(samples)
    mass = np.diff(np.interp(edges, t, cdf)) / cdf[-1]
    big = mass > 0.01
    np.testing.assert_allclose(counts[big], mass[big], rtol=0.05)


def _expected_lw_loss(sde, x, mu, sd):
    """E_{t ~ U(eps, T), z}[|score + z/std|^2 g^2] (mean over dims) of the exact score of
    N(mu, sd^2) data at the point x: closed form in z, quadrature in t (float64)."""
    t = _log_grid(sde)
    t32 = jnp.asarray(t, jnp.float32)
    g2 = np.asarray(sde.sde(jnp.zeros((len(t), 1)), t32)[1], np.float64) ** 2
    alpha = np.asarray(sde.marginal_prob(jnp.ones((len(t), 1)), t32)[0], np.float64)[:, 0]
    std = np.asarray(sde.marginal_prob(jnp.ones((len(t), 1)), t32)[1], np.float64)
    v = alpha[:, None] ** 2 * sd.ravel() ** 2 + std[:, None] ** 2
    # score + z/std = -alpha (x - mu)/v + z (1/std - std/v)
    per_dim = (alpha[:, None] ** 2 * (x - mu).ravel() ** 2 / v**2
               + (1.0 / std[:, None] - std[:, None] / v) ** 2)
    integrand = g2 * per_dim.mean(axis=1)
    return _trapezoid(integrand, t) / (sde.T - EPS)


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_importance_sampled_loss_has_the_likelihood_weighted_expectation(name):
    """The importance-sampled loss of the exact Gaussian score, averaged over 64k draws, equals
    the quadrature of the uniform-t likelihood-weighted loss within 4 standard errors; the plain
    uniform-t estimator's per-draw spread is at least 10x larger."""
    sde = SDES[name]()
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(2, 2, 1)).astype(np.float32) * 0.3
    sd = rng.uniform(0.2, 0.6, size=(2, 2, 1)).astype(np.float32)
    x = (mu + sd * rng.normal(size=(2, 2, 1))).astype(np.float32)
    model = AnalyticScore(sde)
    params = analytic_variables(mu, sd)["params"]
    batch = jnp.broadcast_to(jnp.asarray(x), (4096,) + x.shape)
    want = _expected_lw_loss(sde, x, mu, sd)

    def per_draw(importance):
        _, loss_fn = losses.get_sde_loss_fn(sde, model, train=False, reduce_mean=True,
                                            likelihood_weighting=True,
                                            importance_weighting=importance)
        draw = jax.jit(lambda k: jax.vmap(lambda xi, ki: loss_fn(params, xi[None], ki))(
            batch, jax.random.split(k, batch.shape[0])))
        return np.concatenate([np.asarray(draw(jax.random.PRNGKey(i))) for i in range(16)])

    got = per_draw(True)
    stderr = got.std() / np.sqrt(len(got))
    assert abs(got.mean() - want) < 4 * stderr, (got.mean(), want, stderr)
    assert stderr < 0.01 * want
    uniform = per_draw(False)
    assert uniform.std() > 10 * got.std()


def test_importance_weighting_bad_input():
    model = AnalyticScore(sde_lib.VPSDE())
    with pytest.raises(ValueError, match="training.likelihood_weighting"):
        losses.get_loss_fn(sde_lib.VPSDE(), model, True, likelihood_weighting=False,
                           importance_weighting=True)
    with pytest.raises(ValueError, match="training.continuous"):
        losses.get_loss_fn(sde_lib.VPSDE(), model, True, continuous=False,
                           likelihood_weighting=True, importance_weighting=True)

    class NoLogSNR(sde_lib.SDE):
        N = 10

    with pytest.raises(ValueError, match="training.importance_weighting.*NoLogSNR"):
        losses.likelihood_importance_normalizer(NoLogSNR())
    from score_jax import config_lib

    config = config_lib.load_config("configs/digits_likelihood.py")
    config.training.likelihood_weighting = False
    with pytest.raises(ValueError, match="training.likelihood_weighting=True"):
        config_lib.validate(config)
