"""`--mode nfe_sweep` end to end on a one-resolution digits DDPM++ (random weights, 4 samples per
point)."""
import json
import os

import jax
import numpy as np
import pytest
from test_evaluate import digits_config, write_checkpoint

import main
from score_jax import datasets, sampling, sweep
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils


def sweep_config(tmp_path):
    config = digits_config(tmp_path, batch_size=4)
    config.model.update({"nf": 8, "ch_mult": (1,), "attn_resolutions": ()})  # fast to compile
    config.sampling.noise_removal = False
    config.sweep.update({"methods": ("ddim", "unipc:order=2,variant=bh1"), "nfe": (4,),
                         "num_samples": 4, "reference_batches": 1, "reference_tol": 1e-3,
                         "fid": False})
    return config


def test_nfe_sweep_writes_resumable_table(tmp_path, monkeypatch):
    config = sweep_config(tmp_path)
    workdir = str(tmp_path / "w")
    params = write_checkpoint(config, workdir, lambda p: p)
    result = main.run("nfe_sweep", config, workdir)
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    assert sorted(rows) == [("ddim", 4), ("unipc:order=2,variant=bh1", 4)]
    for r in rows.values():
        assert r["nfe"] == 4 and r["num_samples"] == 4 and r["wall_s"] > 0
        assert 0 < r["rms_error"] <= r["max_error"] < 1
    out = result["dir"]
    for name in ("table.csv", "table.json", "rms_error.png", "max_error.png", "wall_s.png",
                 "points/ddim_nfe4.png", "points/unipc_order2_variantbh1_nfe4.json"):
        assert os.path.exists(os.path.join(out, name)), name

    # The reference is the ODE sampler's solution from the sweep's latents.
    sde, eps = sde_lib.get_sde(config)
    shape = (4, 8, 8, 1)
    ode = sampling.get_ode_sampler(sde, mutils.create_model(config), shape,
                                   datasets.get_data_inverse_scaler(config), rtol=1e-3,
                                   atol=1e-3, eps=eps)
    z = sde.prior_sampling(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0), shape)
    expected, _ = ode(jax.random.PRNGKey(0), {"params": params}, z)
    with np.load(os.path.join(out, "reference.npz")) as f:
        np.testing.assert_allclose(f["samples"], expected, atol=1e-5)

    # A rerun resumes: finished points are read back, not sampled again.
    monkeypatch.setattr(sweep, "_point", lambda *a, **k: pytest.fail("point recomputed"))
    again = main.run("nfe_sweep", config, workdir)
    assert again["rows"] == json.load(open(os.path.join(out, "table.json")))


def test_bad_sweep_input_names_the_key(tmp_path):
    config = sweep_config(tmp_path)
    config.sweep.methods = ("ddpm",)
    with pytest.raises(ValueError, match="sampling.method='ddpm' is unknown"):
        sweep.nfe_sweep(config, str(tmp_path / "w"))
    config.sweep.methods = ("unipc:order=5",)
    with pytest.raises(ValueError,
                       match=r"sampling.order=5 is not valid for unipc; valid: \[1, 2, 3\]"):
        sweep.nfe_sweep(config, str(tmp_path / "w"))
    config.sweep.methods = ("unipc:speed=2",)
    with pytest.raises(ValueError, match="is not key=value with key in"):
        sweep.nfe_sweep(config, str(tmp_path / "w"))
    config.sweep.methods = ("dpm_solver++:order=3",)
    config.sweep.nfe = (2,)
    with pytest.raises(ValueError, match="sampling.nfe=2 is too small for dpm_solver\\+\\+"):
        sweep.nfe_sweep(config, str(tmp_path / "w"))


def test_fid_hook_uses_the_metrics_module(tmp_path, monkeypatch):
    """With sweep.fid and eval.fid_stats_file set, each point gets FID and KID of its uint8
    samples' features against the statistics file (the Inception network and the statistics file
    replaced by stand-ins, so this checks the wiring; test_metrics checks the metrics)."""
    from score_jax import metrics

    calls = {}
    monkeypatch.setattr(metrics, "load_stats", lambda path: {
        "mu": np.zeros(2), "sigma": np.eye(2), "pool_3": np.zeros((5, 2))})
    monkeypatch.setattr(metrics, "get_inception_fn", lambda weights, batch_size: (
        lambda images: calls.setdefault("images", images) is not None
        and {"pool_3": images.reshape(len(images), -1)[:, :2].astype(np.float64)}))
    monkeypatch.setattr(metrics, "kernel_inception_distance",
                        lambda f1, f2, subsets, size, seed: (float(size), 0.5))
    config = sweep_config(tmp_path)
    config.sweep.fid = True
    config.eval.fid_stats_file = str(tmp_path / "stats.npz")
    quality = sweep.quality_fn(config)
    samples = np.full((3, 8, 8, 1), 0.5, np.float32)
    # FID of features (127, 127) x 3 (covariance 0) against N(0, I): |mu|^2 + tr(I) = 2 127^2 + 2.
    result = quality(samples)
    np.testing.assert_allclose(result["fid"], 2 * 127.0**2 + 2, rtol=1e-6)
    assert (result["kid"], result["kid_std"]) == (1000.0, 0.5)
    assert calls["images"].dtype == np.uint8 and calls["images"].shape == (3, 8, 8, 1)
    config.sweep.fid = False
    assert sweep.quality_fn(config) is None
