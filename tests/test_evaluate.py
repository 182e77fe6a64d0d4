"""`--mode sample`, `--mode likelihood` and `--mode eval` on a checkpoint in a workdir.

The network is the embedded default's DDPM++ (configs/digits.py, 8x8x1). With all its parameters
zero it outputs 0, so the score is 0 and the sub-VP probability-flow ODE is linear: x(1) =
x(eps) exp(-B/2) with B = int_eps^1 beta(t) dt, and the log-density has a closed form. The
modes' numbers are checked against it.
"""
import glob
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

import main
from score_jax import config_lib
from score_jax import convert
from score_jax import datasets
from score_jax import digits
from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config(tmp_path, **eval_overrides):
    config = config_lib.load_config(os.path.join(ROOT, "configs", "digits.py"))
    config.data.data_dir = str(tmp_path / "tfds")
    config.model.num_scales = 10  # a 10-step sampler keeps the test fast
    config.eval.update({"batch_size": 150, "num_samples": 150, "bpd_num_repeats": 1,
                        **eval_overrides})
    return config


def write_checkpoint(config, workdir, params_fn, step=7):
    """A converted-style checkpoint (`params`, `ema_params`, `step`) with `params_fn(init)`."""
    variables = mutils.init_model(jax.random.PRNGKey(0), config)
    params = jax.tree.map(params_fn, variables["params"])
    convert.save_converted(workdir, {"params": params, "ema_params": params, "step": step})
    return params


def closed_form_bpd(config, eps=1e-5):
    """Mean bits/dim of the zero-score sub-VP model over the dequantized test digits."""
    b0, b1 = config.model.beta_min, config.model.beta_max
    big_b = b0 * (1 - eps) + 0.5 * (b1 - b0) * (1 - eps ** 2)
    pixels = digits.to_uint8(load_digits().images)[digits.split_indices()["test"]]
    p = pixels.reshape(len(pixels), -1).astype(np.float64)
    # E_u[x^2] for x = 2 (p + u) / 256 - 1, u ~ U(0, 1): the dequantization the bpd mode uses.
    sq = ((2 * (p + 0.5) / 256 - 1) ** 2 + (2 / 256) ** 2 / 12).sum(axis=1)
    dims = p.shape[1]
    logp = -0.5 * dims * np.log(2 * np.pi) - 0.5 * np.exp(-big_b) * sq - 0.5 * dims * big_b
    return float(np.mean(-logp / (dims * np.log(2)) + 7.0))


def test_likelihood_and_eval_match_the_closed_form(tmp_path):
    config = digits_config(tmp_path, enable_loss=True, enable_bpd=True, enable_sampling=False)
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, jnp.zeros_like)

    result = main.run("likelihood", config, workdir)
    assert result["step"] == 7
    assert result["bpd_examples"] == 300  # the whole test split, one dequantization
    np.testing.assert_allclose(result["bpd"], closed_form_bpd(config), atol=1e-4)
    saved = json.load(open(os.path.join(workdir, "eval", "bpd_ckpt_7.json")))
    assert saved == result

    result = main.run("eval", config, workdir)
    np.testing.assert_allclose(result["bpd"], closed_form_bpd(config), atol=1e-4)
    # Zero score: the loss is the mean of z^2 over 300 x 64 standard normal draws (std 0.01).
    assert abs(result["loss"] - 1.0) < 0.05
    assert result["loss_batches"] == 2
    assert json.load(open(os.path.join(workdir, "eval", "ckpt_7.json"))) == result


def test_sample_writes_what_the_sampler_draws(tmp_path):
    config = digits_config(tmp_path, batch_size=4, num_samples=6)
    workdir = str(tmp_path / "w")
    params = write_checkpoint(config, workdir, lambda p: p)  # the random init: a real network

    result = main.run("sample", config, workdir)
    out = os.path.join(workdir, "samples", "ckpt_7")
    # nfe is the official PC count N (n_steps + 1), which counts the 'none' corrector too.
    assert result == {"step": 7, "num_samples": 8, "nfe": 20, "dir": out}
    assert sorted(os.listdir(out)) == ["samples_0.npz", "samples_0.png",
                                       "samples_1.npz", "samples_1.png"]
    # The same draw through the Python API, on one device (the mode shards over two).
    sde, eps = sde_lib.get_sde(config)
    sampler = sampling.get_sampling_fn(config, sde, mutils.create_model(config), (4, 8, 8, 1),
                                       datasets.get_data_inverse_scaler(config), eps)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
    for i in range(2):
        expected, nfe = sampler(jax.random.fold_in(rng, i), {"params": params})
        got = np.load(os.path.join(out, f"samples_{i}.npz"))["samples"]
        assert got.shape == (4, 8, 8, 1) and got.dtype == np.float32
        np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=1e-5)
        assert int(nfe) == 20
    assert 0.0 < got.std()  # not a constant image


def test_sample_refuses_to_write_nan(tmp_path):
    config = digits_config(tmp_path, batch_size=4, num_samples=4)
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, lambda p: jnp.full_like(p, jnp.nan))
    # NaN weights are refused when restored, before any sample is drawn.
    with pytest.raises(ValueError, match=r"no intact checkpoint: step 7 .*NaN or inf values in "
                                         r"ema_params"):
        main.run("sample", config, workdir)
    assert glob.glob(os.path.join(workdir, "samples", "**", "*.*"), recursive=True) == []


def test_modes_need_a_checkpoint(tmp_path):
    config = digits_config(tmp_path)
    with pytest.raises((FileNotFoundError, ValueError), match="checkpoint"):
        main.run("sample", config, str(tmp_path / "empty"))


def test_walkthrough_runs_every_step(tmp_path):
    """notebooks/walkthrough.py (the README's Python examples) on a randomly initialised network."""
    spec = importlib.util.spec_from_file_location("walkthrough",
                                                  os.path.join(ROOT, "notebooks", "walkthrough.py"))
    walkthrough = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(walkthrough)
    config = digits_config(tmp_path)
    # Langevin on VP/sub-VP uses alpha = 1 - beta_i of the N-step discretization: N >= 20 keeps
    # it positive (beta_max / N < 1), as official.
    config.model.num_scales = 50
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, lambda p: p)
    out = walkthrough.walkthrough(config, workdir, batch=4)
    assert out["nfe_pc"] == 100  # N = 50 levels x (predictor + corrector)
    assert out["nfe_ode"] > 2 and np.isfinite(out["bpd"])
    assert out["roundtrip"] < 1e-2  # decode(encode(x)) = x up to the ODE tolerance
    assert out["inpaint_kept"] < 1e-3  # known pixels come back (marginal mean at eps)
    assert sorted(os.listdir(os.path.join(workdir, "walkthrough"))) == [
        "inpainted.npz", "inpainted.png", "ode.npz", "ode.png", "pc.npz", "pc.png"]


def test_training_ends_with_the_final_eval(tmp_path):
    """`training.final_eval` (the main job's last step): a completed run evaluates its last
    checkpoint, as `--mode eval` does, and returns the numbers prefixed `final_`."""
    import main

    config = digits_config(tmp_path, enable_loss=True, enable_bpd=False, enable_sampling=False)
    config.training.update({"n_iters": 2, "batch_size": 8, "log_freq": 1, "eval_freq": 100,
                            "snapshot_sampling": False, "final_eval": True})
    workdir = str(tmp_path / "w")
    result = main.run("train", config, workdir)
    saved = json.load(open(os.path.join(workdir, "eval", "ckpt_2.json")))
    assert result["final_step"] == saved["step"] == 2
    assert result["final_loss"] == saved["loss"] and saved["loss_batches"] == 2
    assert 0.05 < saved["loss"] < 2.0  # a real loss of a 2-step model (VP family starts near 1)
