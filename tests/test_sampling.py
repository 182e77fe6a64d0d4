"""PC and probability-flow ODE samplers against the official outputs (`sampler_refs`) and the
closed-form Gaussian flow."""
import functools
import json

import diffrax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import DATA

from score_jax import config_lib, convert, ode, parallel, sampling
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils
from score_jax.models.utils import get_score_fn

import reference as refcases
from analytic import AnalyticScore, analytic_variables, flow_map

REFS = dict(np.load(DATA / "sampler_refs.npz"))
RUNS = json.loads((DATA / "sampler_refs.json").read_text())["runs"]
SDES = {"vesde": sde_lib.VESDE, "vpsde": sde_lib.VPSDE, "subvpsde": sde_lib.subVPSDE}
EPS = {"vesde": 1e-5, "vpsde": 1e-3, "subvpsde": 1e-3}
identity = lambda x: x


def ref(key):
    """Reference array, NCHW -> NHWC."""
    a = REFS[key]
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def data_params(kind):
    return REFS[f"data_{kind}_mu"].transpose(1, 2, 0), REFS[f"data_{kind}_sd"].transpose(1, 2, 0)


def variables(kind):
    return analytic_variables(*data_params(kind))


def ode_sampler(name, tol=1e-5, denoise=False, eps=None):
    """The (compiled once) Dopri5 ODE sampler of the analytic model for the refs' shape."""
    return _ode_sampler(name, tol, denoise, EPS[name] if eps is None else eps)


@functools.lru_cache(maxsize=None)
def _ode_sampler(name, tol, denoise, eps):
    sde = SDES[name]()
    return sampling.get_ode_sampler(sde, AnalyticScore(sde), (4, 4, 4, 1), identity, rtol=tol,
                                    atol=tol, eps=eps, denoise=denoise)


def score_fn_of(sde, kind):
    return get_score_fn(sde, AnalyticScore(sde), variables(kind), continuous=True)


def test_registries_list_valid_names():
    assert sampling.get_predictor("Reverse_Diffusion") is sampling.reverse_diffusion
    assert sampling.get_corrector("langevin") is sampling.langevin
    with pytest.raises(ValueError,
                       match=r"unknown predictor 'heun'.*ancestral_sampling.*euler_maruyama"):
        sampling.get_predictor("heun")
    with pytest.raises(ValueError, match=r"unknown corrector 'hmc'.*'ald', 'langevin', 'none'"):
        sampling.get_corrector("hmc")


def test_ancestral_sampling_undefined_cases_raise():
    model = AnalyticScore(sde_lib.subVPSDE())
    with pytest.raises(ValueError, match="not defined for subVPSDE"):
        sampling.get_pc_sampler(sde_lib.subVPSDE(), model, (2, 4, 4, 1), "ancestral_sampling",
                                "none", identity, 0.16)
    with pytest.raises(ValueError, match="no probability-flow"):
        sampling.get_pc_sampler(sde_lib.VPSDE(), model, (2, 4, 4, 1), "ancestral_sampling", "none",
                                identity, 0.16, probability_flow=True)
    with pytest.raises(ValueError, match="n_steps"):
        sampling.get_pc_sampler(sde_lib.VPSDE(), model, (2, 4, 4, 1), "none", "langevin",
                                identity, 0.16, n_steps=0)
    # alpha = 1 - beta_max / N < 0: the official sampler returns NaN; ours says why.
    for corrector in ("langevin", "ald"):
        with pytest.raises(ValueError, match=r"needs N > beta_max .* N=10, model.beta_max=20.0"):
            sampling.get_pc_sampler(sde_lib.subVPSDE(N=10), model, (2, 4, 4, 1), "none",
                                    corrector, identity, 0.16)
    with pytest.raises(ValueError, match=r"'ancestral_sampling' on VPSDE needs N > beta_max"):
        sampling.get_pc_sampler(sde_lib.VPSDE(N=10), model, (2, 4, 4, 1), "ancestral_sampling",
                                "none", identity, 0.16)
    sampling.get_pc_sampler(sde_lib.VPSDE(N=21), model, (2, 4, 4, 1), "none", "langevin",
                            identity, 0.16)


def test_shape_mismatch_is_a_clear_error():
    sde = sde_lib.VESDE()
    sampler = sampling.get_pc_sampler(sde, AnalyticScore(sde), (2, 8, 8, 1), "none", "none",
                                      identity, 0.16, continuous=True)
    with pytest.raises(ValueError, match=r"cannot take samples of shape \(2, 8, 8, 1\)"):
        sampler(jax.random.key(0), variables("diag"))  # the model's parameters are 4x4x1


def test_check_finite_counts_bad_samples():
    samples = np.zeros((5, 2, 2, 3), np.float32)
    sampling.check_finite(samples)
    samples[1, 0, 0, 0] = np.nan
    samples[3, 1, 1, 2] = np.inf
    with pytest.raises(FloatingPointError, match=r"2 of 5 samples contain NaN or inf.*\[1, 3\]"):
        sampling.check_finite(samples)


STEP_RUNS = [k for k, r in RUNS.items() if k.startswith("step.") and "official_error" not in r]


@pytest.mark.parametrize("name", list(SDES))
def test_single_updates_match_official(name):
    sde = SDES[name]()
    score_fn = score_fn_of(sde, "diag")
    x = jnp.asarray(ref(f"step.{name}.x_in"))
    keys = [k for k in STEP_RUNS if k.startswith(f"step.{name}.")]
    assert len(keys) == {"vesde": 18, "vpsde": 18, "subvpsde": 9}[name]
    for key in keys:
        run = RUNS[key]
        t = jnp.asarray(ref(f"step.{name}.t{run['timestep_index']}"))
        z = jnp.stack([jnp.asarray(ref(k)) for k in run["rng_keys"]])
        if run["kind"] == "pred":
            out = sampling.get_predictor(run["name"])(sde, score_fn, x, t, z[0],
                                                      run["probability_flow"])
        else:
            out = sampling.get_corrector(run["name"])(sde, score_fn, x, t, z, run["snr"])
        for got, want in zip(out, (ref(key + ".x"), ref(key + ".x_mean"))):
            np.testing.assert_allclose(got, want, rtol=0, atol=5e-7 * np.abs(want).max(),
                                       err_msg=key)


@pytest.mark.parametrize("name", list(SDES))
def test_official_crashes_run(name):
    """Euler-Maruyama with probability_flow=True is the Euler step of the probability-flow ODE;
    Langevin/ALD on sub-VP use alpha_i = 1 - beta_i (the official code raises on both)."""
    sde = SDES[name]()
    score_fn = score_fn_of(sde, "diag")
    x = jnp.asarray(ref(f"step.{name}.x_in"))
    t = jnp.asarray(ref(f"step.{name}.t500"))
    z = jnp.asarray(ref(f"step.{name}.t500.euler_maruyama_rng0_randn_like"))
    assert "official_error" in RUNS[f"step.{name}.t500.euler_maruyama.pf"]
    x1, x1_mean = sampling.euler_maruyama(sde, score_fn, x, t, z, probability_flow=True)
    drift = ode.probability_flow_drift(sde, score_fn)(t[0], x)
    np.testing.assert_allclose(x1, x - drift / sde.N, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(x1, x1_mean)
    if name == "subvpsde":
        assert "official_error" in RUNS["step.subvpsde.t500.langevin"]
        alpha = sde.alphas[int(np.float32(t[0]) * np.float32(sde.N - 1))]  # floor(t (N-1))
        grad = score_fn(x, t)
        zs = z[None]
        for corrector in ("langevin", "ald"):
            x1, x1_mean = sampling.get_corrector(corrector)(sde, score_fn, x, t, zs, 0.16)
            if corrector == "langevin":
                norm = lambda v: np.linalg.norm(np.reshape(v, (v.shape[0], -1)), axis=1).mean()
                step = (0.16 * norm(z) / norm(grad)) ** 2 * 2 * alpha
            else:
                step = (0.16 * sde.marginal_prob(x, t)[1][:, None, None, None]) ** 2 * 2 * alpha
            np.testing.assert_allclose(x1_mean, x + step * grad, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(x1, x1_mean + np.sqrt(2 * step) * z, rtol=1e-5, atol=1e-6)


PC_RUNS = [k for k, r in RUNS.items() if k.startswith("pc.") and "official_error" not in r]


def replay_noise(run, shape):
    """The run's draws (prior; per step the corrector's, then the predictor's) as StepNoise
    arrays with a leading axis N."""
    draws = [jnp.asarray(ref(k)) for k in run["rng_keys_in_call_order"]]
    n_c = run["n_steps"] if run["corrector"] != "none" else 0
    n_p = int(run["predictor"] != "none")
    assert len(draws) == 1 + run["N"] * (n_c + n_p)
    zero = jnp.zeros(shape, jnp.float32)
    steps = []
    for i in range(run["N"]):
        chunk = draws[1 + i * (n_c + n_p): 1 + (i + 1) * (n_c + n_p)]
        corrector = jnp.stack(chunk[:n_c]) if n_c else jnp.zeros((run["n_steps"],) + shape)
        steps.append(sampling.StepNoise(corrector, zero, chunk[n_c] if n_p else zero, zero))
    return draws[0], jax.tree_util.tree_map(lambda *a: jnp.stack(a), *steps)


@pytest.mark.parametrize("key", PC_RUNS)
def test_pc_run_matches_official(key):
    run = RUNS[key]
    name = key.split(".")[1].split("_")[0]
    sde = SDES[name](N=run["N"])
    prior_z, steps = replay_noise(run, tuple(ref(key + ".x").shape))
    # prior_sampling = the normal draw, times sigma_max for VE.
    x_init = prior_z * (sde.sigma_max if name == "vesde" else 1.0)
    run_loop = lambda x0, s: sampling.pc_loop(
        sde, score_fn_of(sde, run["data"]), x0, s, lambda n: n, predictor=run["predictor"],
        corrector=run["corrector"], snr=run["snr"], n_steps=run["n_steps"], eps=run["eps"])
    want = ref(key + ".x")
    assert int(REFS[key + ".nfe"]) == run["N"] * (run["n_steps"] + 1)
    if np.isnan(want).all():
        # VP with N = 10 has DDPM betas up to 2, so 1 - beta < 0: Langevin, ALD and ancestral
        # sampling return NaN officially; ours refuses, saying why.
        assert name == "vpsde"
        with pytest.raises(ValueError, match=r"needs N > beta_max .* N=10, model.beta_max=20.0"):
            run_loop(x_init, steps)
        return
    x, x_mean = jax.jit(run_loop)(x_init, steps)
    got = np.asarray(x_mean if run["denoise"] else x)
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-6 * np.abs(want).max())


@pytest.mark.parametrize("name,predictor,corrector", [
    ("vesde", "reverse_diffusion", "langevin"),
    ("vpsde", "ancestral_sampling", "none"),
    ("subvpsde", "euler_maruyama", "langevin"),
])
def test_pc_sampler_reproduces_data_moments(name, predictor, corrector):
    """N = 1000, 256 samples of 4x4 Gaussian data with per-pixel mean and sd. Per pixel the mean
    is within 4.5 standard errors; the variance ratio within 0.4 (4.5 s.e. of sqrt(2/B)), and its
    average over the 16 pixels within 0.1."""
    sde = SDES[name]()
    batch = 256
    mu, sd = data_params("diag")
    sampler = sampling.get_pc_sampler(sde, AnalyticScore(sde), (batch, 4, 4, 1), predictor,
                                      corrector, identity, 0.16, eps=EPS[name], continuous=True)
    x, nfe = sampler(jax.random.key(7), variables("diag"))
    x = np.asarray(x, np.float64)
    assert int(nfe) == 2000
    assert np.abs((x.mean(0) - mu) / (sd / np.sqrt(batch))).max() < 4.5
    ratio = x.var(0) / sd**2
    assert np.abs(ratio - 1).max() < 0.4, ratio.ravel()
    assert abs(ratio.mean() - 1) < 0.1, ratio.mean()


def test_sharded_batch_matches_unsharded():
    """Same draws on 2 devices as on one (partitionable RNG), and Langevin's step size uses the
    norms of the whole batch, so the samples agree."""
    assert jax.device_count() >= 2
    sde = sde_lib.VESDE(N=20)
    mesh = jax.make_mesh((2,), ("data",))
    sharding = parallel.batch_sharding(mesh)
    args = (sde, AnalyticScore(sde), (4, 4, 4, 1), "reverse_diffusion", "langevin", identity, 0.16)
    kw = dict(eps=1e-5, continuous=True, n_steps=2)
    plain, _ = sampling.get_pc_sampler(*args, **kw)(jax.random.key(3), variables("diag"))
    sharded, nfe = sampling.get_pc_sampler(*args, sharding=sharding, **kw)(jax.random.key(3),
                                                                           variables("diag"))
    assert sharded.sharding.spec == sharding.spec
    assert int(nfe) == 20 * 3
    np.testing.assert_allclose(sharded, plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch size 3 is not divisible by the 2 devices"):
        sampling.get_pc_sampler(sde, AnalyticScore(sde), (3, 4, 4, 1), "none", "langevin",
                                identity, 0.16, sharding=sharding)


def test_get_sampling_fn_dispatches_on_config():
    sde = sde_lib.VESDE(N=5)
    config = ml_collections.ConfigDict({
        "training": {"continuous": True},
        "sampling": {"method": "pc", "predictor": "reverse_diffusion", "corrector": "none",
                     "snr": 0.16, "n_steps_each": 1, "probability_flow": False,
                     "noise_removal": True}})
    shape = (2, 4, 4, 1)
    x, nfe = sampling.get_sampling_fn(config, sde, AnalyticScore(sde), shape, identity, 1e-5)(
        jax.random.key(0), variables("iso"))
    assert x.shape == shape and int(nfe) == 10 and np.isfinite(x).all()
    config.sampling.method = "ode"
    ode = sampling.get_sampling_fn(config, sde, AnalyticScore(sde), shape, identity, 1e-5)
    x, nfe = jax.eval_shape(ode, jax.random.key(0), variables("iso"))  # traced, not compiled
    assert x.shape == shape and nfe.dtype == jnp.int32
    config.sampling.method = "ddpm"
    with pytest.raises(ValueError, match=r"sampling.method='ddpm' is unknown; valid: .*'unipc'"):
        sampling.get_sampling_fn(config, sde, AnalyticScore(sde), shape, identity, 1e-5)


@pytest.mark.parametrize("name", list(SDES))
def test_ode_sampler_matches_exact_flow_and_official(name):
    """From the official latents: at rtol = atol = 1e-5 within 1e-4 of the exact flow and of the
    official RK45; at 1e-3 no worse than twice the official error (+ tol)."""
    sde = SDES[name]()
    for tol in (1e-5, 1e-3):
        sampler = ode_sampler(name, tol)
        for kind in ("iso", "diag"):
            prefix = f"ode.{name}.{kind}"
            x, nfe = sampler(jax.random.key(0), variables(kind), jnp.asarray(ref(prefix + ".z")))
            exact = ref(prefix + ".exact_x_eps")
            official = ref(f"{prefix}.tol{tol:g}.x" if tol == 1e-3 else prefix + ".tol1e-05.x")
            err = np.abs(np.asarray(x, np.float64) - exact).max()
            official_err = np.abs(official - exact).max()
            np.testing.assert_allclose(flow_map(sde, ref(prefix + ".z"), *data_params(kind), 1.0,
                                                EPS[name]), exact, atol=1e-6)
            if tol == 1e-5:
                assert err < 1e-4, (prefix, err)
                assert np.abs(np.asarray(x) - official).max() < 1e-4
            else:
                assert err < 2 * official_err + tol, (prefix, err, official_err)
            official_nfe = int(REFS[f"{prefix}.tol{tol:g}.nfe" if tol == 1e-3
                                    else prefix + ".tol1e-05.nfe"])
            assert 0.75 * official_nfe < int(nfe) < 1.3 * official_nfe, (prefix, nfe, official_nfe)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("variable", ["sigma", "log_snr"])
def test_ode_sampler_in_other_variables_matches_exact_flow(name, variable):
    """From the official latents, the flow in x/alpha against sigma = std/alpha or log-SNR: at
    rtol = atol = 1e-5 within 1e-4 of the exact flow (the t-form's bound)."""
    sde = SDES[name]()
    sampler = sampling.get_ode_sampler(sde, AnalyticScore(sde), (4, 4, 4, 1), identity,
                                       rtol=1e-5, atol=1e-5, eps=EPS[name], variable=variable)
    for kind in ("iso", "diag"):
        prefix = f"ode.{name}.{kind}"
        x, _ = sampler(jax.random.key(0), variables(kind), jnp.asarray(ref(prefix + ".z")))
        np.testing.assert_allclose(x, ref(prefix + ".exact_x_eps"), rtol=0, atol=1e-4)


def test_ode_variable_maps_time_exactly():
    """t -> s -> t through `ode.probability_flow` (sde.log_snr, t_from_log_snr) in float32, at
    both ends of every SDE's range: relative error below 1e-5, or 5e-8 absolute (VE's t is
    affine in log sigma, known to a float32 ulp: 5e-8 in t is 4e-7 in log sigma)."""
    for name, cls in SDES.items():
        sde = cls()
        for variable in ("sigma", "log_snr", "snr"):
            flow = ode.probability_flow(sde, None, variable)
            to_lam = {"sigma": lambda s: -np.log(s), "log_snr": lambda s: s, "snr": np.log}
            for t in (1e-5, EPS[name], 0.5, sde.T):
                back = float(sde.t_from_log_snr(jnp.float32(to_lam[variable](flow.s_of_t(t)))))
                assert abs(back - t) < 1e-5 * t + 5e-8, (name, variable, t, back)


def test_ode_config_keys():
    """sampling.ode_* reach the sampler; a bad value names its key before any work."""
    sde = sde_lib.VESDE(N=5)
    config = ml_collections.ConfigDict({
        "training": {"continuous": True},
        "sampling": {"method": "ode", "noise_removal": False, "ode_method": "tsit5",
                     "ode_rtol": 1e-4, "ode_atol": 1e-6, "ode_controller": "PI",
                     "ode_variable": "sigma"}})
    assert ode.solver_options(config.sampling, "sampling") == dict(
        method="tsit5", rtol=1e-4, atol=1e-6, pcoeff=0.4, icoeff=0.3, variable="sigma")
    assert ode.solver_options(ml_collections.ConfigDict(), "eval") == dict(
        method="dopri5", rtol=1e-5, atol=1e-5, pcoeff=0.0, icoeff=1.0, variable="t")
    assert ode.solver_options(ml_collections.ConfigDict(), "sampling") == dict(
        method="dopri5", rtol=1e-5, atol=1e-5, pcoeff=0.4, icoeff=0.3, variable="t")
    z = jnp.asarray(ref("ode.vesde.iso.z"))
    shape = tuple(z.shape)
    x, nfe = sampling.get_sampling_fn(config, sde, AnalyticScore(sde), shape, identity, 1e-5)(
        jax.random.key(0), variables("iso"), z)
    direct = sampling.get_ode_sampler(sde, AnalyticScore(sde), shape, identity, eps=1e-5,
                                      **ode.solver_options(config.sampling, "sampling"))
    x2, nfe2 = direct(jax.random.key(0), variables("iso"), z)
    np.testing.assert_array_equal(x, x2)
    assert int(nfe) == int(nfe2)
    for key, bad in (("ode_method", "rk45"), ("ode_controller", "PID"),
                     ("ode_variable", "lambda"), ("ode_rtol", 0.0), ("ode_atol", -1.0)):
        cfg = config.copy_and_resolve_references()
        cfg.sampling[key] = bad
        with pytest.raises(ValueError, match=rf"sampling.{key}={bad!r} is invalid"):
            sampling.get_sampling_fn(cfg, sde, AnalyticScore(sde), shape, identity, 1e-5)
        with pytest.raises(ValueError, match=rf"sampling.{key}={bad!r} is invalid"):
            config_lib.validate(cfg)


def test_ode_denoise_matches_official():
    sde = sde_lib.VPSDE()
    prefix = "ode.vpsde.diag"
    z = jnp.asarray(ref(prefix + ".z"))
    x, nfe = ode_sampler("vpsde", denoise=True)(jax.random.key(0), variables("diag"), z)
    plain, plain_nfe = ode_sampler("vpsde")(jax.random.key(0), variables("diag"), z)
    assert int(nfe) == int(plain_nfe) + 1  # the denoising evaluation counts (not officially)
    np.testing.assert_allclose(x, ref(prefix + ".tol1e-05.denoise.x"), atol=1e-4)
    score_fn = score_fn_of(sde, "diag")
    t = jnp.full((z.shape[0],), 1e-3)
    np.testing.assert_allclose(x, sampling.reverse_diffusion(sde, score_fn, plain, t, 0 * z)[1],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method,fixed_nfe", [("dopri5", None), ("euler", 40), ("heun", 41)])
def test_solve_ode_counts_every_evaluation(method, fixed_nfe):
    """The nfe `solve_ode` reports equals the number of vector-field calls actually executed,
    counted on device by a mutable array (DirectAdjoint: diffrax's default adjoint rejects refs)."""
    sde = sde_lib.VPSDE()
    drift = ode.probability_flow_drift(sde, score_fn_of(sde, "diag"))

    def run(z):
        calls = jax.new_ref(jnp.zeros((), jnp.int32))

        def fn(t, x):
            calls[...] += 1
            return drift(t, x)

        x, nfe = ode.solve_ode(fn, z, 1.0, 1e-3, method=method, fixed_nfe=fixed_nfe,
                                    adjoint=diffrax.DirectAdjoint())
        return x, nfe, calls[...]

    x, nfe, calls = jax.jit(run)(jnp.asarray(ref("ode.vpsde.diag.z")))
    assert int(nfe) == int(calls)
    if method != "dopri5":
        assert int(nfe) == {"euler": 40, "heun": 40}[method]
        tol = {"euler": 0.3, "heun": 0.05}[method]
        assert np.abs(np.asarray(x) - ref("ode.vpsde.diag.exact_x_eps")).max() < tol
    with pytest.raises(ValueError, match="unknown ODE method 'rk4'"):
        ode.solve_ode(lambda t, y: y, jnp.zeros(3), 1.0, 0.0, method="rk4")


PC_STEP_KEYS = ("pc_corrector_x", "pc_corrector_x_mean", "pc_predictor_x", "pc_predictor_x_mean")


def model_case_pc_step(case, params=None):
    """Our corrector-then-predictor update of reference `case` (its official config, EMA weights
    and stored noises): the outputs in `PC_STEP_KEYS` order (also used by
    tests/parity_report.py)."""
    config, arrays = refcases.case_config(case), refcases.case_arrays(case)
    step = refcases.case_meta(case)["pc_step"]
    if params is None:
        params = convert.load_official_checkpoint(refcases.case_checkpoint(case),
                                                  config)["ema_params"]
    sde, _ = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    n_c = step["n_steps_used"] if step["corrector"] != "none" else 0
    noises = [jnp.asarray(arrays[k]) for k in step["rng_keys"]]
    x = jnp.asarray(arrays["x"])
    z_corrector = jnp.stack(noises[:n_c]) if n_c else jnp.zeros((1,) + x.shape)
    z_predictor = noises[n_c] if step["predictor"] != "none" else jnp.zeros_like(x)

    @jax.jit
    def pc_step(params, x, t, z_corrector, z_predictor):
        score_fn = get_score_fn(sde, model, {"params": params},
                                continuous=config.training.continuous)
        xc = sampling.get_corrector(step["corrector"])(sde, score_fn, x, t, z_corrector,
                                                       step["snr"])
        return xc + sampling.get_predictor(step["predictor"])(sde, score_fn, xc[0], t,
                                                              z_predictor, False)

    return pc_step(params, x, jnp.asarray(arrays["pc_t"]), z_corrector, z_predictor)


@pytest.mark.parametrize("case", ["ncsnpp_ve_cont_small", "ddpmpp_vp_cont_small",
                                  "ddpmpp_subvp_cont_small", "ncsnv2_ve_small", "ddpm_vp_small"])
def test_model_case_pc_step_matches_official(case):
    """The corrector then the predictor of the case's official config, with its stored noises."""
    arrays = refcases.case_arrays(case)
    for got, key in zip(model_case_pc_step(case), PC_STEP_KEYS):
        want = arrays[key]
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max(), err_msg=key)
