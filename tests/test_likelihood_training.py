"""Likelihood training and bounds: importance-sampled t for the likelihood-weighted loss (against
its closed-form density and a quadrature of the loss's expectation), the ELBO against the exact
likelihood of Gaussian data, and the variational dequantizer."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import losses
from score_jax import sde as sde_lib

from analytic import AnalyticScore, analytic_variables

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


def _quadrature_bound(sde, x, mu, sd):
    """Theorem 1's bound in nats (B,) for the exact score of N(mu, sd^2) data, float64: the prior
    term in closed form, the DSM term closed form in z, trapezoid in t; independent of the
    library's estimator (no importance sampling, no Z)."""
    from analytic import marginal_coeffs

    t = _log_grid(sde)
    g2 = np.asarray(sde.sde(jnp.zeros((len(t), 1)), jnp.asarray(t, jnp.float32))[1],
                    np.float64) ** 2
    a, s = marginal_coeffs(sde, t)
    x = x.reshape(len(x), 1, -1).astype(np.float64)
    mu, sd = mu.ravel(), sd.ravel()
    v = a[:, None] ** 2 * sd**2 + s[:, None] ** 2
    # g^2/2 (E|score + z/std|^2 - D/std^2), with (1/std - std/v)^2 - 1/std^2 = -2/v + std^2/v^2.
    dsm = 0.5 * g2 * np.sum(a[:, None] ** 2 * (x - mu) ** 2 / v**2 - 2.0 / v
                            + s[:, None] ** 2 / v**2, axis=-1)
    integral = np.sum(0.5 * (dsm[:, 1:] + dsm[:, :-1]) * np.diff(t), axis=-1)
    a_T, s_T = marginal_coeffs(sde, np.float64(sde.T))
    c2 = sde.sigma_max**2 if isinstance(sde, sde_lib.VESDE) else 1.0
    dims = x.shape[-1]
    prior = (dims / 2 * np.log(2 * np.pi * c2)
             + (a_T**2 * np.sum(x[:, 0] ** 2, -1) + s_T**2 * dims) / (2 * c2))
    return prior + integral - dims * np.log(a_T)


@pytest.mark.parametrize("name", list(SDES))
def test_elbo_against_exact_likelihood_of_gaussian_data(name):
    """Exact score of N(mu, sd^2) data: (1) the bound, by quadrature, equals the exact bits/dim of
    the probability-flow model (closed form) within [-2e-3, 5e-3] per example (it is tight at the
    true score; the gap left is the decoder's and the prior's, O(std_eps^2), O(alpha_T); the
    trapezoid's error ~1e-3); (2) our
    Monte Carlo estimator (`get_elbo_fn`) averages to that quadrature within 4 standard errors
    (2,048 draws per point); (3) a wrong score (sd x 1.5) gives a bound above the exact value."""
    from score_jax import likelihood

    from analytic import model_bpd

    sde = SDES[name]()
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(2, 2, 1)) * 0.3
    sd = rng.uniform(0.2, 0.6, size=(2, 2, 1))
    x0 = mu + sd * rng.normal(size=(4, 2, 2, 1))
    to_bpd = lambda nats: nats / np.log(2.0) / 4 + 8.0
    exact = model_bpd(sde, x0, mu, sd, EPS, offset=8.0)
    quad = to_bpd(_quadrature_bound(sde, x0, mu, sd))
    # VE's std_eps is sigma_min = 0.01: its decoder leaves a gap of a few 1e-3 (above, as a bound).
    assert np.all(quad - exact > -2e-3) and np.all(quad - exact < 5e-3), quad - exact

    elbo = likelihood.get_elbo_fn(sde, AnalyticScore(sde), lambda v: v, eps=EPS, num_t=32)
    x = jnp.asarray(np.repeat(x0, 1024, axis=0), jnp.float32)
    draws = [np.asarray(elbo(jax.random.PRNGKey(k), analytic_variables(mu, sd), x)[0])
             for k in range(2)]
    draws = np.concatenate([d.reshape(4, -1) for d in draws], axis=1)
    stderr = draws.std(axis=1) / np.sqrt(draws.shape[1])
    assert np.all(np.abs(draws.mean(axis=1) - quad) < 4 * stderr), (draws.mean(1), quad, stderr)
    assert np.all(stderr < 0.05)
    assert int(elbo(jax.random.PRNGKey(0), analytic_variables(mu, sd), x[:4])[1]) == 32
    wrong = np.asarray(elbo(jax.random.PRNGKey(0), analytic_variables(mu, 1.5 * sd), x)[0])
    assert np.all(wrong.reshape(4, -1).mean(axis=1) > exact + 0.1)


def test_dequantizer_log_q_is_the_change_of_variables():
    """log q(u|x) of the flow equals log N(eps) - log|det du/deps| from the full Jacobian
    (jax.jacobian, a second method), on random (non-zero) flow parameters; u lies in (0, 1)."""
    from score_jax import dequantizer

    flow = dequantizer.Dequantizer(nf=8, num_layers=2)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 4, 1)) * 2 - 1
    eps = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    params = flow.init(jax.random.PRNGKey(2), x, eps)["params"]
    params = jax.tree.map(
        lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(3), p.shape), params)
    u, log_q = flow.apply({"params": params}, x, eps)
    assert u.shape == x.shape and float(u.min()) > 0 and float(u.max()) < 1
    for b in range(2):
        fn = lambda e: flow.apply({"params": params}, x[b:b + 1], e.reshape(1, 4, 4, 1))[0].ravel()
        jac = jax.jacobian(fn)(eps[b].ravel())
        log_det = np.linalg.slogdet(np.asarray(jac, np.float64))[1]
        log_normal = -0.5 * np.sum(np.asarray(eps[b], np.float64) ** 2 + np.log(2 * np.pi))
        np.testing.assert_allclose(float(log_q[b]), log_normal - log_det, atol=1e-3)


def _zero_score_bound(config):
    """Bits/dim of the bound for the all-zero network (score 0) over the uniformly dequantized
    test digits, in closed form: |std s + z|^2 - |z|^2 = 0, so only the prior term and
    -D log alpha_T remain."""
    from sklearn.datasets import load_digits

    from score_jax import digits

    sde, _ = sde_lib.get_sde(config)
    pixels = digits.to_uint8(load_digits().images)[digits.split_indices()["test"]]
    p = pixels.reshape(len(pixels), -1).astype(np.float64)
    sq = ((2 * (p + 0.5) / 256 - 1) ** 2 + (2 / 256) ** 2 / 12).sum(axis=1)
    lmc = -0.25 * (sde.beta_max - sde.beta_min) - 0.5 * sde.beta_min
    a_T, s_T = np.exp(lmc), 1.0 - np.exp(2 * lmc)  # sub-VP
    dims = p.shape[1]
    nats = 0.5 * dims * np.log(2 * np.pi) + 0.5 * (a_T**2 * sq + s_T**2 * dims) - dims * lmc
    return float(np.mean(nats / dims / np.log(2) + 7.0))


def test_likelihood_mode_bound_and_variational_dequantizer(tmp_path):
    """`--mode likelihood` reports the bound beside the exact value (zero network: the bound's
    closed form to 1e-4, and above the exact value); `--mode train_dequantizer` then
    `eval.dequantizer='variational'` gives finite numbers; bad input names its key."""
    from test_evaluate import closed_form_bpd, digits_config, write_checkpoint

    import main

    config = digits_config(tmp_path, bound_num_t=2)
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, jnp.zeros_like)
    result = main.run("likelihood", config, workdir)
    np.testing.assert_allclose(result["bpd"], closed_form_bpd(config), atol=1e-4)
    np.testing.assert_allclose(result["bpd_bound"], _zero_score_bound(config), atol=1e-4)
    assert result["bpd_bound"] > result["bpd"] and result["bpd_dequantizer"] == "uniform"

    config.eval.dequantizer = "variational"
    with pytest.raises(FileNotFoundError, match="train_dequantizer"):
        main.run("likelihood", config, workdir)
    config.deq.n_iters, config.deq.log_freq, config.deq.batch_size = 2, 1, 16
    trained = main.run("train_dequantizer", config, workdir)
    assert trained["updates"] == 2 and np.isfinite(trained["bound_bpd"])
    result = main.run("likelihood", config, workdir)
    assert result["bpd_dequantizer"] == "variational"
    assert np.isfinite(result["bpd"]) and np.isfinite(result["bpd_bound"])
    # Fresh zero-initialised heads: the flow is u = sigmoid(eps), a proper q, so the bound holds.
    assert result["bpd_bound"] > result["bpd"] - 0.05

    config.deq.nf = 16
    with pytest.raises(ValueError, match="deq.nf"):
        main.run("likelihood", config, workdir)
    config.eval.dequantizer = "flowpp"
    with pytest.raises(ValueError, match="eval.dequantizer"):
        main.run("likelihood", config, workdir)


def _dequantizer_file(workdir):
    import flax.serialization

    from score_jax import dequantizer

    with open(os.path.join(workdir, dequantizer.DEQ_DIR, dequantizer.DEQ_FILE), "rb") as f:
        return flax.serialization.msgpack_restore(f.read())


def test_train_dequantizer_resumes_after_a_kill_and_holds_the_workdir_lock(tmp_path, monkeypatch):
    """A run killed at step 3 (last checkpoint: step 2, `deq.snapshot_freq`) and rerun resumes at
    step 2 and ends with the parameters of an uninterrupted run, bit for bit; parameters and record
    are one file; a workdir whose `train.lock` is held is refused before any work."""
    from test_evaluate import digits_config, write_checkpoint

    import main
    from score_jax import datasets, utils

    config = digits_config(tmp_path)
    config.deq.update(n_iters=4, log_freq=1, batch_size=8, snapshot_freq=2, nf=8)
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    for workdir in (straight, killed):
        write_checkpoint(config, workdir, lambda p: p)
    with utils.workdir_lock(straight), pytest.raises(RuntimeError, match="in use"):
        main.run("train_dequantizer", config, straight)
    assert not os.path.exists(os.path.join(straight, "dequantizer"))
    main.run("train_dequantizer", config, straight)

    real, starts = datasets.get_dataset, []

    def dies_at_step_3(*args, **kwargs):
        starts.append(kwargs["start_step"])
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt("killed")
            yield batch

    monkeypatch.setattr(datasets, "get_dataset", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        main.run("train_dequantizer", config, killed)
    (run_dir,) = [d for d in os.listdir(os.path.join(killed, "dequantizer"))]
    assert os.listdir(os.path.join(killed, "dequantizer", run_dir, "checkpoints-meta")) == ["2"]
    result = main.run("train_dequantizer", config, killed)
    assert starts == [0, 2] and result["updates"] == 4 and np.isfinite(result["bound_bpd"])
    assert sorted(os.listdir(os.path.join(killed, "dequantizer"))) == ["dequantizer.msgpack",
                                                                       run_dir]
    a, b = _dequantizer_file(straight), _dequantizer_file(killed)
    assert a["record"] == b["record"] and a["record"]["score_step"] == 7
    assert a["record"]["updates"] == 4
    assert np.any(a["params"]["base"]["kernel"] != 0)  # trained: the zero-initialised head moved
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])


@pytest.mark.parametrize("method,pcoeff,icoeff", [("tsit5", 0.0, 1.0), ("dopri5", 0.4, 0.3),
                                                  ("tsit5", 0.4, 0.3)])
def test_ode_options_match_the_closed_form(method, pcoeff, icoeff):
    """Tsit5 and the PI controller (the options of benchmarks/ode_options.py): bits/dim of the
    analytic model within 1e-4 of its closed form (Rademacher probe: exact for its diagonal
    Jacobian), and nfe = 2 + 6 per step, like dopri5."""
    from score_jax import likelihood

    from analytic import model_bpd

    sde = sde_lib.subVPSDE()
    rng = np.random.default_rng(2)
    mu = rng.normal(size=(4, 4, 1)) * 0.3
    sd = rng.uniform(0.2, 0.6, size=(4, 4, 1))
    x = (mu + sd * rng.normal(size=(3, 4, 4, 1))).astype(np.float32)
    fn = likelihood.get_likelihood_fn(sde, AnalyticScore(sde), lambda v: v, method=method,
                                      pcoeff=pcoeff, icoeff=icoeff)
    bpd, _, nfe = fn(jax.random.PRNGKey(0), analytic_variables(mu, sd), x)
    np.testing.assert_allclose(bpd, model_bpd(sde, x, mu, sd, 1e-5), atol=1e-4)
    assert (int(nfe) - 2) % 6 == 0 and int(nfe) > 20
