"""Parity of the SDE library with the official sde_lib (tests/data/sde_refs.npz), plus closed
forms."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import DATA

from score_jax import sde as sde_lib

REFS = np.load(DATA / "sde_refs.npz")
SPECS = json.loads((DATA / "sde_refs.json").read_text())["sdes"]


def nhwc(a):
    a = np.asarray(a)
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def build(spec):
    cls = {"VESDE": sde_lib.VESDE, "VPSDE": sde_lib.VPSDE,
           "subVPSDE": sde_lib.subVPSDE}[spec["class"]]
    if spec["class"] == "VESDE":
        return cls(sigma_min=spec["sigma_min"], sigma_max=spec["sigma_max"], N=spec["N"])
    return cls(beta_min=spec["beta_0"], beta_max=spec["beta_1"], N=spec["N"])


def assert_rel(actual, key, rtol=1e-6):
    ref = nhwc(REFS[key])
    actual = np.asarray(actual)
    assert actual.shape == ref.shape, key
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(actual), finite, err_msg=key)
    scale = max(np.max(np.abs(ref[finite]), initial=0.0), 1e-30)
    err = np.max(np.abs(actual[finite] - ref[finite]), initial=0.0) / scale
    assert err <= rtol, f"{key}: max rel error {err:.3g} > {rtol}"


X = jnp.asarray(nhwc(REFS["x"]))
Z = jnp.asarray(nhwc(REFS["z"]))
T = jnp.asarray(REFS["t"])


def dummy_score(x, t):
    return -x


@pytest.mark.parametrize("name", sorted(SPECS))
def test_sde_matches_official(name):
    sde = build(SPECS[name])
    drift, diffusion = sde.sde(X, T)
    assert_rel(drift, f"{name}.sde_drift")
    assert_rel(diffusion, f"{name}.sde_diffusion")
    mean, std = sde.marginal_prob(X, T)
    assert_rel(mean, f"{name}.marginal_mean")
    assert_rel(std, f"{name}.marginal_std")
    assert_rel(sde.prior_logp(Z), f"{name}.prior_logp_z")
    f, G = sde.discretize(X, T)
    assert_rel(f, f"{name}.discretize_f")
    assert_rel(G, f"{name}.discretize_G")
    for pf, tag in [(False, ""), (True, "pf_")]:
        rsde = sde.reverse(dummy_score, probability_flow=pf)
        assert rsde.N == sde.N and rsde.T == sde.T
        drift, diffusion = rsde.sde(X, T)
        assert_rel(drift, f"{name}.reverse_{tag}sde_drift")
        if pf:
            assert float(REFS[f"{name}.reverse_pf_sde_diffusion"]) == 0.0
            np.testing.assert_array_equal(diffusion, 0.0)
        else:
            assert_rel(diffusion, f"{name}.reverse_sde_diffusion")
        f, G = rsde.discretize(X, T)
        assert_rel(f, f"{name}.reverse_{tag}discretize_f")
        assert_rel(G, f"{name}.reverse_{tag}discretize_G")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_discrete_tables_match_official(name):
    sde = build(SPECS[name])
    if isinstance(sde, sde_lib.VESDE):
        assert_rel(sde.discrete_sigmas, f"{name}.discrete_sigmas")
    elif not isinstance(sde, sde_lib.subVPSDE):
        assert_rel(sde.discrete_betas, f"{name}.discrete_betas")
        for q in ["alphas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_1m_alphas_cumprod"]:
            assert_rel(getattr(sde, q), f"{name}.{q}")


def test_float64_tables_match_official_model_utils():
    """mutils.get_sigmas / get_ddpm_params are the float64 tables the networks use."""
    sigmas = np.exp(np.linspace(np.log(50.0), np.log(0.01), 1000))
    np.testing.assert_allclose(sigmas, REFS["mutils.get_sigmas"], rtol=1e-12)
    betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000, dtype=np.float64)
    np.testing.assert_allclose(betas, REFS["mutils.get_ddpm_params.betas"], rtol=1e-12)
    np.testing.assert_allclose(np.cumprod(1 - betas), REFS["mutils.get_ddpm_params.alphas_cumprod"],
                               rtol=1e-12)


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.subVPSDE(), sde_lib.VESDE()])
def test_marginal_matches_moments_of_the_sde(sde):
    """d/dt of the marginal mean/variance equals what the drift/diffusion imply
    (Sarkka & Solin 5.50)."""
    x = jnp.ones((1, 2, 2, 1), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    t = jnp.array([0.3])
    mean_coeff = lambda s: sde.marginal_prob(x, s)[0][0, 0, 0, 0]
    var = lambda s: sde.marginal_prob(x, s)[1][0] ** 2
    h = 1e-3
    dmean = (mean_coeff(t + h) - mean_coeff(t - h)) / (2 * h)
    drift, g = sde.sde(x, t)
    # Linear drift f(x,t) = a(t) x: dm/dt = a m, dv/dt = 2 a v + g^2.
    a = drift[0, 0, 0, 0] / x[0, 0, 0, 0]
    np.testing.assert_allclose(dmean, a * mean_coeff(t), rtol=2e-3, atol=1e-6)
    dvar = (var(t + h) - var(t - h)) / (2 * h)
    np.testing.assert_allclose(dvar, 2 * a * var(t) + g[0] ** 2, rtol=2e-3)


def test_prior_sampling_has_prior_scale():
    rng = jax.random.PRNGKey(0)
    ve = sde_lib.VESDE(sigma_max=7.0)
    s = ve.prior_sampling(rng, (64, 8, 8, 3))
    assert s.shape == (64, 8, 8, 3)
    np.testing.assert_allclose(np.std(s), 7.0, rtol=0.03)
    s = sde_lib.VPSDE().prior_sampling(rng, (64, 8, 8, 3))
    np.testing.assert_allclose(np.std(s), 1.0, rtol=0.03)
    # prior_logp is the log density of the prior: compare with the closed-form Gaussian.
    z = jnp.ones((1, 2, 1, 1))
    np.testing.assert_allclose(ve.prior_logp(z), -np.log(2 * np.pi * 49.0) - 1 / 49.0, rtol=1e-6)


def test_sde_in_jit_does_not_retrace():
    traces = []

    @jax.jit
    def f(sde, x, t):
        traces.append(1)
        return sde.marginal_prob(x, t)[0] + sde.discretize(x, t)[0]

    for _ in range(3):
        f(sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000), X, T)
    assert len(traces) == 1
    f(sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10), X, T)
    assert len(traces) == 2
    # An SDE closed over by a jitted function also compiles once.
    sde = sde_lib.VPSDE()
    g = jax.jit(lambda x, t: sde.sde(x, t)[0])
    g(X, T)
    g(X, T)
    assert g._cache_size() == 1


def cfg(sde="vesde", **model):
    c = ml_collections.ConfigDict()
    c.training = ml_collections.ConfigDict({"sde": sde})
    c.model = ml_collections.ConfigDict(dict(sigma_min=0.01, sigma_max=50.0, beta_min=0.1,
                                             beta_max=20.0, num_scales=1000, **model))
    return c


def test_get_sde():
    sde, eps = sde_lib.get_sde(cfg("vesde"))
    assert isinstance(sde, sde_lib.VESDE) and eps == 1e-5 and sde.N == 1000
    sde, eps = sde_lib.get_sde(cfg("vpsde"))
    assert type(sde) is sde_lib.VPSDE and eps == 1e-3
    sde, eps = sde_lib.get_sde(cfg("subvpsde"))
    assert type(sde) is sde_lib.subVPSDE and eps == 1e-3


def test_get_sde_unknown_name():
    with pytest.raises(ValueError, match="training.sde='edm' is unknown"):
        sde_lib.get_sde(cfg("edm"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(cls=sde_lib.VESDE, N=0), "num_scales"),
    (dict(cls=sde_lib.VPSDE, N=-3), "num_scales"),
    (dict(cls=sde_lib.VESDE, sigma_min=50.0, sigma_max=0.01), "sigma_min=50.0"),
    (dict(cls=sde_lib.VESDE, sigma_min=1.0, sigma_max=1.0), "sigma_max=1.0"),
    (dict(cls=sde_lib.VPSDE, beta_min=30.0, beta_max=20.0), "beta_min=30.0"),
    (dict(cls=sde_lib.subVPSDE, beta_min=30.0, beta_max=20.0), "beta_max=20.0"),
])
def test_bad_parameters_raise(kwargs, match):
    cls = kwargs.pop("cls")
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_t_outside_range_raises():
    sde = sde_lib.VESDE()
    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1.0\]"):
        sde.discretize(X, jnp.array([0.1, 0.2, 1.5, 0.3]))
    with pytest.raises(ValueError, match="t must lie"):
        sde_lib.VPSDE().discretize(X, jnp.array([-0.1, 0.2, 0.5, 0.3]))


SDES = [sde_lib.VPSDE(), sde_lib.subVPSDE(), sde_lib.VESDE(),
        sde_lib.VPSDE(beta_min=5.0, beta_max=5.0), sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0)]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: f"{type(s).__name__}")
def test_marginal_coefficients_and_log_snr(sde):
    """alpha, sigma are marginal_prob's; log_snr = log(alpha / sigma) against float64 closed forms;
    t_from_log_snr inverts log_snr."""
    t = np.linspace(1e-5, 1.0, 50)
    mean, std = sde.marginal_prob(jnp.ones((50, 2)), jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(sde.alpha(jnp.asarray(t, jnp.float32)), mean[:, 0], rtol=1e-6)
    np.testing.assert_allclose(sde.sigma(jnp.asarray(t, jnp.float32)), std, rtol=1e-6)
    if hasattr(sde, "beta_min"):
        lmc = -0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
        alpha = np.exp(lmc)
        one_m_a2 = -np.expm1(2 * lmc)  # 1 - alpha^2 without cancellation at small t
        sigma = one_m_a2 if type(sde) is sde_lib.subVPSDE else np.sqrt(one_m_a2)
    else:
        alpha, sigma = np.ones_like(t), sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    lam = np.log(alpha / sigma)
    with jax.enable_x64(True):
        np.testing.assert_allclose(sde.log_snr(jnp.asarray(t)), lam, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sde.t_from_log_snr(jnp.asarray(lam)), t, rtol=1e-10)
    # float32: a few ulps of lambda, hence of t (absolutely: VE's t is an affine map of lambda).
    np.testing.assert_allclose(sde.log_snr(jnp.asarray(t, jnp.float32)), lam, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(sde.t_from_log_snr(jnp.asarray(lam, jnp.float32)), t, rtol=1e-4,
                               atol=1e-6)
    assert np.all(np.diff(lam) < 0)


@pytest.mark.parametrize("sde", SDES[:3], ids=lambda s: type(s).__name__)
def test_score_from_output_inverts_the_noise_parameterisation(sde):
    """For x_t = alpha x_0 + sigma z the exact conditional score is -z / sigma: a noise-predicting
    (VP, sub-VP) output z and a score-predicting (VE) output -z / sigma both give it."""
    t = jnp.asarray([0.01, 0.3, 0.9], jnp.float32)
    z = jax.random.normal(jax.random.key(0), (3, 4))
    sigma = sde.sigma(t)[:, None]
    out = z if sde.discrete_loss != "smld" else -z / sigma
    np.testing.assert_allclose(sde.score_from_output(out, t, True), -z / sigma, rtol=1e-6)
    label = sde.network_label(t, True)
    np.testing.assert_allclose(label, sde.sigma(t) if sde.discrete_label_is_index else 999 * t,
                               rtol=1e-6)


@pytest.mark.parametrize("sde", SDES[:3], ids=lambda s: type(s).__name__)
def test_data_and_noise_predictions_of_the_exact_score(sde):
    """x_0 ~ N(0, v I): the exact score of p_t is -x / (alpha^2 v + sigma^2), so D must be the
    posterior mean alpha v x / (alpha^2 v + sigma^2) and eps = sigma x / (alpha^2 v + sigma^2)."""
    v = 0.7
    with jax.enable_x64(True):
        t = jnp.asarray([0.01, 0.3, 0.9], jnp.float64)
        x = jax.random.normal(jax.random.key(1), (3, 5), jnp.float64)
        alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        var = alpha**2 * v + sigma**2
        score = -x / var
        np.testing.assert_allclose(sde.data_prediction(x, score, t), alpha * v * x / var,
                                   rtol=1e-12)
        np.testing.assert_allclose(sde.noise_prediction(score, t), sigma * x / var, rtol=1e-12)
