"""The training loop: data parallelism, checkpoints, exact resume, bad input, end to end."""
import json
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_jax import checkpoints as ckpt_lib
from score_jax import config_lib, parallel, train
from score_jax.models import register_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@register_model(name="tiny_test_net")
class TinyNet(nn.Module):
    """A conv net with a label embedding and dropout: every feature the step must handle."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x, labels, train=False):
        h = nn.Conv(8, (3, 3))(x)
        emb = nn.Dense(8)(jnp.log1p(jnp.asarray(labels, x.dtype))[:, None])
        h = nn.Dropout(0.1, deterministic=not train)(nn.swish(h + emb[:, None, None, :]))
        return nn.Conv(x.shape[-1], (3, 3))(h)


def tiny_config(sde="vpsde", continuous=True):
    c = ml_collections.ConfigDict()
    c.seed = 3
    c.data = dict(dataset="DIGITS", image_size=8, num_channels=1, centered=True)
    c.model = dict(name="tiny_test_net", ema_rate=0.99, sigma_min=0.01, sigma_max=50.0,
                   beta_min=0.1, beta_max=20.0, num_scales=1000)
    c.training = dict(sde=sde, continuous=continuous, reduce_mean=True, likelihood_weighting=False,
                      batch_size=4, n_jitted_steps=2)
    c.optim = dict(optimizer="Adam", lr=1e-3, beta1=0.9, eps=1e-8, weight_decay=0.0, warmup=2,
                   grad_clip=1.0)
    return c


def _run_steps(config, devices, xs):
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))
    from score_jax.models import utils as mutils

    state = train.create_train_state(config, mesh)
    train_step, eval_step = train.get_train_fns(config, mutils.create_model(config), mesh)
    state, metrics = train_step(state, jax.device_put(xs, parallel.batch_sharding(mesh, 1)))
    ev = eval_step(state, jax.device_put(xs[0], parallel.batch_sharding(mesh)),
                   jax.random.PRNGKey(5))
    return jax.device_get((state, metrics, ev))


@pytest.mark.parametrize("sde,continuous", [("vpsde", True), ("vesde", False)])
def test_two_devices_equal_one_device(sde, continuous):
    assert jax.device_count() == 2
    config = tiny_config(sde, continuous)
    xs = jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 8, 8, 1)) * 2 - 1
    s1, m1, e1 = _run_steps(config, jax.devices()[:1], xs)
    s2, m2, e2 = _run_steps(config, jax.devices(), xs)
    assert int(s1.step) == int(s2.step) == 2
    np.testing.assert_allclose(m1.loss, m2.loss, rtol=1e-5)
    np.testing.assert_allclose(m1.grad_norm, m2.grad_norm, rtol=1e-5)
    np.testing.assert_allclose(e1, e2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((s1.params, s1.ema_params, s1.opt_state)),
                    jax.tree.leaves((s2.params, s2.ema_params, s2.opt_state))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Warm-up lr*min(s/2, 1) for s = 0, 1.
    np.testing.assert_allclose(m1.lr, [0.0, 5e-4], rtol=1e-6)
    assert np.all(np.isfinite(m1.loss)) and not np.allclose(m1.loss[0], m1.loss[1])


def test_step_rng_is_a_function_of_the_step():
    """Two chunks of 2 steps = the same 4 steps in one scan (fold_in(rng, step))."""
    config = tiny_config()
    xs = jax.random.uniform(jax.random.PRNGKey(0), (4, 4, 8, 8, 1)) * 2 - 1
    mesh = parallel.make_mesh()
    from score_jax.models import utils as mutils

    model = mutils.create_model(config)
    train_step, _ = train.get_train_fns(config, model, mesh)
    state = train.create_train_state(config, mesh)
    state, ma = train_step(state, xs[:2])
    state, mb = train_step(state, xs[2:])
    # The same 4 steps in one call, fused with lax.scan (the accelerator path).
    scan_step, _ = train.get_train_fns(config, model, mesh, use_scan=True)
    state4, m4 = scan_step(train.create_train_state(config, mesh), xs)
    np.testing.assert_allclose(np.concatenate([ma.loss, mb.loss]), m4.loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state4.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_checkpoint_roundtrip_and_sampling_restore(tmp_path):
    config = tiny_config()
    mesh = parallel.make_mesh()
    state = train.create_train_state(config, mesh)
    state = state.replace(step=jnp.asarray(7, jnp.int32),
                          ema_params=jax.tree.map(lambda p: p + 1.0, state.params))
    ck = ckpt_lib.Checkpointer(str(tmp_path))
    ck.save(state, preemption=True)
    ck.wait()
    assert sorted(os.listdir(tmp_path / "checkpoints-meta")) == ["7"]
    fresh = train.create_train_state(config, mesh)
    restored = ck.restore(fresh)
    ck.close()
    assert int(restored.step) == 7
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
    ema, step = ckpt_lib.restore_for_sampling(str(tmp_path))
    assert step == 7
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(state.ema_params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt_lib.restore_for_sampling(str(tmp_path / "empty"))


def _digits_tiny_config(**training):
    c = tiny_config()
    c.eval = dict(batch_size=8)
    c.training.update(dict(n_iters=4, n_jitted_steps=1, log_freq=1, eval_freq=100,
                           snapshot_freq=100, snapshot_freq_for_preemption=1,
                           snapshot_sampling=False), **training)
    return c


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _digits_tiny_config()
    config.optim.update(lr=1e15, warmup=0)  # the first update blows the weights up
    with pytest.raises(FloatingPointError, match=r"step 1: the loss .* not finite; .* Last "
                                                 r"finite checkpoint \(checked\): step 1 in "):
        train.train(config, str(tmp_path))
    assert _committed_steps(tmp_path / "checkpoints-meta") == [1]
    assert _committed_steps(tmp_path / "checkpoints") == []


def test_image_size_not_matching_the_dataset(tmp_path):
    config = _digits_tiny_config()
    config.data.image_size = 16
    with pytest.raises(ValueError, match="image"):
        train.train(config, str(tmp_path))
    assert _committed_steps(tmp_path / "checkpoints-meta") == []


def test_bad_batch_size_and_workdir(tmp_path):
    config = tiny_config()
    config.training.batch_size = 3
    with pytest.raises(ValueError, match="not a positive multiple of the number of devices"):
        train.train(config, str(tmp_path / "w"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        train.train(tiny_config(), str(blocker / "w"))


# ---------------------------------------------------------------- end to end through main.py

# The digits default shrunk: 8x8x1 DIGITS, a tiny DDPM++.
SMALL = ["--config.model.nf=16", "--config.model.num_res_blocks=1",
         "--config.training.batch_size=8",
         "--config.training.log_freq=1", "--config.training.snapshot_sampling=False",
         "--config.training.final_eval=False"]


def _main(workdir, *overrides, config="configs/digits.py", env=None, wait=True):
    cmd = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}", "--mode=train",
           *overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=1800)
    return proc.returncode, out


def _env(cache_dir):
    """Two CPU devices, and a persistent compilation cache so the three runs compile once."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _trajectory(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_rows = {r["step"]: r for r in rows if "loss" in r}
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    return train_rows, evals


def _committed_steps(directory):
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) \
        if os.path.isdir(directory) else []


def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path):
    """SIGKILL a run once a preemption checkpoint exists, restart it: every logged loss, grad
    norm, lr and eval loss equals the uninterrupted run's, step for step."""
    steps = ["--config.training.n_iters=40", "--config.training.n_jitted_steps=2",
             "--config.training.snapshot_freq_for_preemption=6",
             "--config.training.snapshot_freq=20", "--config.training.eval_freq=10",
             "--config.optim.warmup=10"]
    env = _env(tmp_path / "jax_cache")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    rc, out = _main(ref, *SMALL, *steps, env=env)
    assert rc == 0, out[-3000:]

    proc = _main(killed, *SMALL, *steps, env=env, wait=False)
    meta = killed / "checkpoints-meta"
    deadline = time.time() + 300
    while not _committed_steps(meta) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed_from = max(_committed_steps(meta) + _committed_steps(killed / "checkpoints"))
    assert 0 < resumed_from < 40
    assert 40 not in _committed_steps(killed / "checkpoints")

    rc, out = _main(killed, *SMALL, *steps, env=env)
    assert rc == 0, out[-3000:]
    ref_rows, ref_evals = _trajectory(ref)
    rows, evals = _trajectory(killed)
    assert sorted(rows) == sorted(ref_rows) == list(range(40))
    for s in range(40):
        for k in ("loss", "grad_norm", "lr"):
            assert rows[s][k] == ref_rows[s][k], (s, k, rows[s][k], ref_rows[s][k])
    assert evals == ref_evals and sorted(evals) == [10, 20, 30, 40]
    # Checkpoints: all snapshots kept, one preemption checkpoint; same final weights.
    assert _committed_steps(killed / "checkpoints") == [20, 40]
    assert len(_committed_steps(meta)) == 1
    a, _ = ckpt_lib.restore_for_sampling(str(ref))
    b, _ = ckpt_lib.restore_for_sampling(str(killed))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    # The loss went down on this short run (VP losses start near 1).
    losses_ = [ref_rows[s]["loss"] for s in range(40)]
    assert np.mean(losses_[-10:]) < 0.9 * np.mean(losses_[:10])


# One step of training for the other families, in-process, on DIGITS (8x8x1) with shrunk networks.
FAMILY_RUNS = {
    "ddpm": ("configs/vp/ddpm/cifar10.py",
             {"model.nf": 32, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
              "model.attn_resolutions": (4,)}),
    "ncsnv2": ("configs/ve/ncsnv2/cifar10.py", {"model.nf": 8}),
    "ncsn": ("configs/ve/ncsn/cifar10.py", {"model.nf": 8}),
}


@pytest.mark.parametrize("family", sorted(FAMILY_RUNS))
def test_one_step_end_to_end(family, tmp_path):
    import main

    path, overrides = FAMILY_RUNS[family]
    config = config_lib.load_config(os.path.join(ROOT, path), {
        "data.dataset": "DIGITS", "data.image_size": 8, "data.num_channels": 1,
        "data.random_flip": False, "data.data_dir": str(tmp_path / "tfds"),
        "training.batch_size": 4, "training.n_iters": 1, "training.n_jitted_steps": 1,
        "training.snapshot_sampling": False, **overrides})
    main.run("train", config, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[0]["step"] == 0 and np.isfinite(rows[0]["loss"]) and rows[0]["loss"] > 0
    assert _committed_steps(tmp_path / "checkpoints") == [1]
    ema, step = ckpt_lib.restore_for_sampling(str(tmp_path))
    assert step == 1 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(ema))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))


def test_training_starts_from_converted_official_weights(tmp_path):
    """A workdir holding `--mode convert` output: training restores its params, EMA and step
    (with a fresh optimizer state), and `restore_for_sampling` returns its EMA."""
    from score_jax import convert

    import reference as refcases

    case = "ddpm_vp_small"
    config = refcases.case_config(case)
    official = convert.load_official_checkpoint(str(refcases.case_checkpoint(case)), config)
    ckpt_lib.save_converted(str(tmp_path), official)
    mesh = parallel.make_mesh()
    ck = ckpt_lib.Checkpointer(str(tmp_path))
    state = ck.restore(train.create_train_state(config, mesh))
    ck.close()
    assert int(state.step) == official["step"] == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(official["params"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(official["ema_params"])):
        np.testing.assert_array_equal(a, b)
    assert all(float(jnp.abs(m).max()) == 0 for m in jax.tree.leaves(state.opt_state[-2].mu))
    ema, step = ckpt_lib.restore_for_sampling(str(tmp_path))
    assert step == 1
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(official["ema_params"])):
        np.testing.assert_array_equal(a, b)
