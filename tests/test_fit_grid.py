"""Fitted time grids: `solvers.fit_time_grid` on an exact-score Gaussian mixture (float64), the grid
files' checks, and `--mode fit_grid` -> `sample` / `nfe_sweep` with `sampling.time_grid='fitted'` on
a tiny digits DDPM++ (random weights)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_evaluate import write_checkpoint
from test_solvers import problem
from test_sweep import sweep_config

import main
from score_jax import datasets, sampling, solvers
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils


def _rel(y, ref):
    return float(np.sqrt(np.mean((np.asarray(y) - ref) ** 2) / np.mean(ref**2)))


@pytest.mark.parametrize("sde_name,method,nfe,kw", [
    ("vp", "dpm_solver++", 6, dict(order=2)),
    ("ve", "unipc", 8, dict(order=3, variant="bh2")),
])
def test_fitted_grid_beats_its_start_on_held_back_latents(sde_name, method, nfe, kw):
    """Fitted on 64 latents of the narrow mixture (stds 0.05-0.3), the grid is >= 1.3x more
    accurate than its start (the default grid) on 128 other latents; the reference of
    the held-back latents is dopri5 at 1e-9."""
    with jax.enable_x64(True):
        sde, z, ref, score, _ = problem(sde_name, "narrow")
        eps = sde.sampling_eps
        z_val = jnp.asarray(sde.prior_sampling(jax.random.key(11), (128, 4)), jnp.float64)
        ref_val = np.asarray(solvers.reference_flow(sde, score, z_val, eps, tol=1e-9))
        info = {}
        grid = solvers.fit_time_grid(sde, score, method, nfe, eps, jnp.asarray(z),
                                     reference=ref, info=info, **kw)
        assert grid.dtype == np.float64 and grid.shape == (nfe + 1,)
        assert grid[0] == sde.T and grid[-1] == eps and np.all(np.diff(grid) < 0)
        np.testing.assert_array_equal(info["start"], solvers.time_grid(
            sde, solvers.default_time_grid(method, nfe, kw["order"]), nfe, eps))
        run = solvers.grid_runner(sde, score, method, nfe, eps, **kw)
        start, fitted = _rel(run(z_val, info["start"]), ref_val), _rel(run(z_val, grid), ref_val)
        # The table of the fitted grid is the one `integrate` runs.
        tab = solvers.table(sde, method, nfe, eps, time_grid_kind=grid, **kw)
        np.testing.assert_allclose(solvers.integrate(sde, score, z_val, tab), run(z_val, grid),
                                   rtol=1e-12, atol=1e-12)
    print(f"{sde_name} {method} {nfe} NFE: held-back error {start:.3e} -> {fitted:.3e}")
    assert start / fitted >= 1.3, (start, fitted)


def test_array_grids_reproduce_named_grids_and_are_checked():
    sde = sde_lib.subVPSDE()
    for method, nfe, kind in [("dpm_solver", 10, "logsnr"), ("dpm_solver", 7, "quadratic"),
                              ("edm_heun", 9, "karras"), ("unipc", 6, "logsnr_power")]:
        named = solvers.table(sde, method, nfe, 1e-3, time_grid_kind=kind, denoise=True)
        steps = solvers.grid_steps(method, nfe, 3, True)
        if method == "dpm_solver" and kind != "logsnr":  # its steps start at the orders' points
            orders = solvers._singlestep_orders(3, nfe - 1)
            ts = solvers.time_grid(sde, kind, nfe - 1, 1e-3)[np.cumsum([0] + orders)]
        else:
            ts = solvers.time_grid(sde, kind, steps, 1e-3)
        given = solvers.table(sde, method, nfe, 1e-3, time_grid_kind=ts, denoise=True)
        for a, b in zip(named[:6], given[:6]):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"needs 6 times .* got shape \(5,\)"):
        solvers.table(sde, "ddim", 5, 1e-3, time_grid_kind=np.linspace(1, 1e-3, 5))
    with pytest.raises(ValueError, match="must fall strictly from T=1.0 to eps=0.001"):
        solvers.table(sde, "ddim", 2, 1e-3, time_grid_kind=[1.0, 0.9, 1e-2])


def _grid_record(sde, method="unipc", nfe=6, eps=1e-3, **kw):
    return {**sampling.grid_settings(sde, method, nfe, eps, **kw),
            "time_grid": solvers.time_grid(sde, "logsnr", nfe, eps).tolist()}


def test_grid_file_for_other_settings_is_refused(tmp_path):
    sde = sde_lib.VPSDE()
    path = str(tmp_path / "grids" / "unipc_6.json")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(_grid_record(sde), f)
    grid = sampling.resolve_time_grid("fitted", sde, "unipc", 6, 1e-3, workdir=str(tmp_path))
    np.testing.assert_array_equal(grid, solvers.time_grid(sde, "logsnr", 6, 1e-3))
    for args, kw, match in [
            ((sde_lib.VPSDE(beta_max=10.0), "unipc", 6, 1e-3), {},
             r"sde.beta_max: file 20.0, sampler 10.0"),
            ((sde_lib.subVPSDE(), "unipc", 6, 1e-3), {},
             r"sde.name: file 'VPSDE', sampler 'subVPSDE'"),
            ((sde, "unipc", 6, 1e-5), {}, r"eps: file 0.001, sampler 1e-05"),
            ((sde, "unipc", 8, 1e-3), {}, r"nfe: file 6, sampler 8"),
            ((sde, "dpm_solver++", 6, 1e-3), {}, r"method: file 'unipc', sampler 'dpm_solver\+\+'"),
            ((sde, "unipc", 6, 1e-3), {"order": 2}, r"order: file 3, sampler 2"),
            ((sde, "unipc", 6, 1e-3), {"variant": "bh1"}, r"variant: file 'bh2', sampler 'bh1'"),
            ((sde, "unipc", 6, 1e-3), {"denoise": True},
             r"noise_removal: file False, sampler True")]:
        with pytest.raises(ValueError, match="unipc_6.json' was fitted for other settings.*"
                           + match):
            sampling.resolve_time_grid(path, *args, **kw)
    with pytest.raises(ValueError, match="'fitted' needs the workdir"):
        sampling.resolve_time_grid("fitted", sde, "unipc", 6, 1e-3)
    with pytest.raises(ValueError, match="unipc_7.json' does not exist"):
        sampling.resolve_time_grid("fitted", sde, "unipc", 7, 1e-3, workdir=str(tmp_path))
    with pytest.raises(ValueError, match="time_grid='cosine' is unknown"):
        sampling.resolve_time_grid("cosine", sde, "unipc", 6, 1e-3)


def test_fit_grid_mode_then_sample_and_sweep_with_the_fitted_grid(tmp_path):
    config = sweep_config(tmp_path)
    config.sampling.update({"method": "dpm_solver++", "nfe": 4, "order": 2})
    config.fit_grid.update({"num_fit": 4, "num_validation": 4, "reference_tol": 1e-4,
                            "max_evals": 12})
    config.eval.num_samples = 4
    workdir = str(tmp_path / "w")
    params = write_checkpoint(config, workdir, lambda p: p)
    record = main.run("fit_grid", config, workdir)
    path = os.path.join(workdir, "grids", "dpm_solver++_4.json")
    assert record["path"] == path and json.load(open(path))["time_grid"] == record["time_grid"]
    sde, eps = sde_lib.get_sde(config)
    assert record["sde"] == {"name": "subVPSDE", "T": 1.0, "beta_min": 0.1, "beta_max": 20.0}
    assert (record["eps"], record["nfe"], record["method"], record["order"]) == (eps, 4,
                                                                                  "dpm_solver++", 2)
    assert record["checkpoint_step"] == 7 and record["start_grid"] == "logsnr"
    assert 0 < record["evals"] <= 12 + 2
    errors = record["errors"]
    assert 0 < errors["fit"]["fitted"] <= errors["fit"]["start"] < 1
    assert 0 < errors["validation"]["fitted"] < 1
    grid = np.asarray(record["time_grid"])
    assert grid[0] == 1.0 and grid[-1] == eps and np.all(np.diff(grid) < 0)

    config.sampling.time_grid = "fitted"
    out = main.run("sample", config, workdir)
    got = np.load(os.path.join(out["dir"], "samples_0.npz"))["samples"]
    sampler = sampling.get_solver_sampler(
        sde, mutils.create_model(config), (4, 8, 8, 1), datasets.get_data_inverse_scaler(config),
        "dpm_solver++", nfe=4, order=2, time_grid=grid, eps=eps)
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), 7), 0)
    expected, nfe = sampler(rng, {"params": params})
    assert out["nfe"] == 4 and int(nfe) == 4
    np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=1e-5)

    config.sweep.methods = ("dpm_solver++:time_grid=fitted",)
    rows = main.run("nfe_sweep", config, workdir)["rows"]
    assert [(r["method"], r["nfe"]) for r in rows] == [("dpm_solver++:time_grid=fitted", 4)]

    # Another budget, or the file under other settings: refused before any work.
    config.sampling.nfe = 5
    with pytest.raises(ValueError, match=r"dpm_solver\+\+_5.json' does not exist"):
        main.run("sample", config, workdir)
    config.sampling.time_grid = path
    with pytest.raises(ValueError, match="nfe: file 4, sampler 5"):
        main.run("sample", config, workdir)
