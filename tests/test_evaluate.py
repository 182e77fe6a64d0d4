"""`--mode sample`, `--mode likelihood` and `--mode eval` on a checkpoint in a workdir.

The network is the embedded default's DDPM++ (configs/digits.py, 8x8x1). With all its parameters
zero it outputs 0, so the score is 0 and the sub-VP probability-flow ODE is linear: x(1) =
x(eps) exp(-B/2) with B = int_eps^1 beta(t) dt, and the log-density has a closed form. The
modes' numbers are checked against it.
"""
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

import main
from score_jax import checkpoints as ckpt_lib
from score_jax import config_lib, datasets, digits, evaluate, metrics, sampling
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config(tmp_path, **eval_overrides):
    config = config_lib.load_config(os.path.join(ROOT, "configs", "digits.py"))
    config.data.data_dir = str(tmp_path / "tfds")
    config.model.num_scales = 10  # a 10-step sampler keeps the test fast
    config.eval.update({"batch_size": 150, "num_samples": 150, "bpd_num_repeats": 1,
                        "begin_ckpt": 0, "end_ckpt": 0, **eval_overrides})
    return config


def write_checkpoint(config, workdir, params_fn, step=7):
    """A converted-style checkpoint (`params`, `ema_params`, `step`) with `params_fn(init)`."""
    variables = mutils.init_model(jax.random.PRNGKey(0), config)
    params = jax.tree.map(params_fn, variables["params"])
    ckpt_lib.save_converted(workdir, {"params": params, "ema_params": params, "step": step})
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
    out = result["dir"]
    assert os.path.dirname(out) == os.path.join(workdir, "samples", "ckpt_7")
    assert os.path.basename(out).startswith("pc_")
    # nfe is the official PC count N (n_steps + 1), which counts the 'none' corrector too.
    assert result == {"step": 7, "num_samples": 8, "nfe": 20, "dir": out}
    assert sorted(os.listdir(out)) == ["samples_0.npz", "samples_0.png",
                                       "samples_1.npz", "samples_1.png", "settings.json"]
    settings = json.load(open(os.path.join(out, "settings.json")))
    assert settings["sampling"]["predictor"] == "euler_maruyama"
    assert settings["num_samples"] == 8 and settings["step"] == 7 and settings["seed"] == 0
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


def pixel_features(weights=None, batch_size=100):
    """A stand-in for `metrics.get_inception_fn` (the network itself is tested in test_metrics.py):
    the uint8 pixels, tiled to 2048 features."""
    def fn(images):
        metrics.check_images(images)
        x = images.reshape(len(images), -1).astype(np.float32)
        return {"pool_3": np.tile(x, (1, 2048 // x.shape[1])), "logits": None}
    return fn


def test_fid_stats_mode_reads_the_whole_split(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORE_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(metrics, "get_inception_fn", pixel_features)
    config = digits_config(tmp_path, fid_stats_split="test")
    result = main.run("fid_stats", config, str(tmp_path / "w"))
    path = str(tmp_path / "cache" / "stats" / "digits_8_test.npz")
    assert result == {"path": path, "num_images": 300}
    pixels = digits.to_uint8(load_digits().images)[digits.split_indices()["test"]]
    expected = pixel_features()(pixels[..., None])["pool_3"].astype(np.float64)
    stats = metrics.load_stats(path)
    np.testing.assert_allclose(stats["mu"], expected.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["sigma"], np.cov(expected, rowvar=False), rtol=1e-9,
                               atol=1e-9)
    assert os.listdir(os.path.dirname(path)) == ["digits_8_test.npz"]  # no temporary left


def quality_config(tmp_path, **eval_overrides):
    """FID/KID only, 3 rounds of 4 samples, against `tmp_path/stats.npz`."""
    return digits_config(tmp_path, **{
        "batch_size": 4, "num_samples": 12, "enable_loss": False, "enable_bpd": False,
        "enable_sampling": True, "kid_subsets": 5, "fid_stats_file": str(tmp_path / "stats.npz"),
        **eval_overrides})


def test_eval_resumes_after_a_kill(tmp_path, monkeypatch):
    """Killed after the first of 3 rounds, `--mode eval` restarts at the second round and writes
    the JSON an uninterrupted evaluation writes."""
    monkeypatch.setattr(metrics, "get_inception_fn", pixel_features)
    config = quality_config(tmp_path)
    reference = np.random.RandomState(0).randint(0, 256, (10, 2048)).astype(np.float32)
    metrics.save_stats(config.eval.fid_stats_file, reference)
    for w in ("a", "b"):
        write_checkpoint(config, str(tmp_path / w), lambda p: p)

    whole = main.run("eval", config, str(tmp_path / "a"))
    assert whole["num_samples"] == 12 and whole["mean_nfe"] == 20 and whole["is"] is None
    assert whole["fid"] > 0 and np.isfinite(whole["kid"])

    calls, kill_at = [], [2]

    class Killed(Exception):
        pass

    def killed_at_round_1(weights=None, batch_size=100):
        fn = pixel_features()

        def wrapped(images):
            calls.append(len(images))
            if len(calls) == kill_at[0]:
                kill_at[0] = None  # once
                raise Killed
            return fn(images)
        return wrapped

    monkeypatch.setattr(metrics, "get_inception_fn", killed_at_round_1)
    with pytest.raises(Killed):
        main.run("eval", config, str(tmp_path / "b"))
    eval_dir = tmp_path / "b" / "eval"
    (run_dir,) = (eval_dir / "ckpt_7").iterdir()
    assert sorted(os.listdir(run_dir)) == ["features_0.npz", "settings.json"]
    assert not (eval_dir / "ckpt_7.json").exists()
    calls.clear()
    resumed = main.run("eval", config, str(tmp_path / "b"))
    assert calls == [4, 4]  # rounds 1 and 2 only
    assert resumed["dir"] == str(run_dir)
    assert json.load(open(eval_dir / "ckpt_7.json")) == resumed
    assert json.load(open(run_dir / "eval.json")) == resumed
    drop_dir = lambda r: {k: v for k, v in r.items() if k != "dir"}
    assert drop_dir(resumed) == drop_dir(whole)
    assert os.path.basename(whole["dir"]) == run_dir.name  # same settings, same key
    # The same numbers from the written samples, computed directly.
    (sample_dir,) = (tmp_path / "b" / "samples" / "ckpt_7").iterdir()
    samples = np.concatenate([np.load(sample_dir / f"samples_{i}.npz")["samples"]
                              for i in range(3)])
    pool = pixel_features()(metrics.samples_to_uint8(samples))["pool_3"]
    stats = metrics.load_stats(config.eval.fid_stats_file)
    np.testing.assert_allclose(whole["fid"], metrics.frechet_distance(
        *metrics.feature_stats(pool), stats["mu"], stats["sigma"]), rtol=1e-10)
    np.testing.assert_allclose([whole["kid"], whole["kid_std"]], metrics.kernel_inception_distance(
        pool, reference, subsets=5, subset_size=1000, seed=config.seed), rtol=1e-10)


def test_eval_with_the_inception_network(tmp_path, inception_weights):
    """Two rounds of two samples through the real network: the JSON's FID and KID are those of the
    written samples' features."""
    config = quality_config(tmp_path, batch_size=2, num_samples=4,
                            inception_weights=inception_weights)
    inception_fn = metrics.get_inception_fn(inception_weights)
    pixels = digits.to_uint8(load_digits().images[:4])[..., None]
    reference = metrics.save_stats(config.eval.fid_stats_file, inception_fn(pixels)["pool_3"])
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, lambda p: p)
    result = main.run("eval", config, workdir)
    (sample_dir,) = glob.glob(os.path.join(workdir, "samples", "ckpt_7", "pc_*"))
    samples = np.concatenate([np.load(os.path.join(sample_dir, f"samples_{i}.npz"))["samples"]
                              for i in range(2)])
    pool = inception_fn(metrics.samples_to_uint8(samples))["pool_3"]
    np.testing.assert_allclose(result["fid"], metrics.frechet_distance(
        *metrics.feature_stats(pool), reference["mu"], reference["sigma"]), rtol=1e-6)
    np.testing.assert_allclose(result["kid"], metrics.kernel_inception_distance(
        pool, reference["pool_3"], subsets=5, seed=config.seed)[0], rtol=1e-6)
    assert result["is"] is None and result["fid"] > 0


def test_eval_refuses_a_partial_last_round(tmp_path):
    config = quality_config(tmp_path, num_samples=6)
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, lambda p: p)
    with pytest.raises(ValueError, match="eval.num_samples=6 is not a multiple of "
                                         "eval.batch_size=4"):
        main.run("eval", config, workdir)
    assert not os.path.exists(os.path.join(workdir, "eval"))
    assert not os.path.exists(os.path.join(workdir, "samples"))


def test_eval_needs_a_checkpoint_in_the_range(tmp_path):
    config = digits_config(tmp_path, begin_ckpt=1, end_ckpt=3, enable_sampling=False)
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, lambda p: p)  # step 7: checkpoint 7 // 2000 = 0
    with pytest.raises(FileNotFoundError, match=r"eval.begin_ckpt=1 <= step // "
                                                r"training.snapshot_freq \(2000\) <= "
                                                r"eval.end_ckpt=3; steps there: \[7\]"):
        main.run("eval", config, workdir)


def test_eval_with_another_sampler_does_not_reuse_the_first_ones_rounds(tmp_path, monkeypatch):
    """The defect of issue 21: after a finished PC evaluation, an evaluation with DDIM must
    draw its own rounds (NFE 5, not PC's 20) into its own folder, leave the first one intact, and
    a rerun of the PC settings reuses the PC rounds without sampling."""
    monkeypatch.setattr(metrics, "get_inception_fn", pixel_features)
    config = quality_config(tmp_path)
    metrics.save_stats(config.eval.fid_stats_file,
                       np.random.RandomState(0).randint(0, 256, (10, 2048)).astype(np.float32))
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, lambda p: p)
    pc = main.run("eval", config, workdir)
    pc_files = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(pc["dir"], "*"))}

    ddim_config = config.copy_and_resolve_references()
    ddim_config.sampling.method, ddim_config.sampling.nfe = "ddim", 5
    ddim = main.run("eval", ddim_config, workdir)
    assert pc["mean_nfe"] == 20 and ddim["mean_nfe"] == 5
    assert ddim["dir"] != pc["dir"] and os.path.basename(ddim["dir"]).startswith("ddim_")
    assert abs(ddim["fid"] - pc["fid"]) > 1e-6
    assert {p: os.path.getmtime(p) for p in glob.glob(os.path.join(pc["dir"], "*"))} == pc_files
    assert json.load(open(os.path.join(ddim["dir"], "settings.json")))["sampling"]["nfe"] == 5
    assert len(os.listdir(os.path.join(workdir, "samples", "ckpt_7"))) == 2

    def no_sampling(*args, **kwargs):
        raise AssertionError("the PC rounds exist: nothing may be drawn")

    monkeypatch.setattr(evaluate, "draw_fn", lambda *a, **k: no_sampling)
    again = main.run("eval", config, workdir)
    assert again == pc


def test_two_samplers_do_not_overwrite_each_other(tmp_path):
    """`sample` with PC, then with DDIM, then PC again: two folders, the first untouched."""
    config = digits_config(tmp_path, batch_size=4, num_samples=4)
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, lambda p: p)
    pc = main.run("sample", config, workdir)
    first = np.load(os.path.join(pc["dir"], "samples_0.npz"))["samples"]
    ddim_config = config.copy_and_resolve_references()
    ddim_config.sampling.method, ddim_config.sampling.nfe = "ddim", 5
    ddim = main.run("sample", ddim_config, workdir)
    assert ddim["dir"] != pc["dir"] and ddim["nfe"] == 5 and pc["nfe"] == 20
    second = np.load(os.path.join(ddim["dir"], "samples_0.npz"))["samples"]
    np.testing.assert_array_equal(np.load(os.path.join(pc["dir"], "samples_0.npz"))["samples"],
                                  first)
    assert np.abs(second - first).max() > 1e-3
    # A new seed is another setting too; the same settings find their batches.
    seeded = config.copy_and_resolve_references()
    seeded.seed = 1
    assert main.run("sample", seeded, workdir)["dir"] not in (pc["dir"], ddim["dir"])
    assert main.run("sample", config, workdir) == pc
