"""The noise-conditional classifier: official architecture, its gradient, training, and
class-conditional sampling (the sampler, `--mode train_classifier`, `--mode sample` with
`sampling.class_label`, bad input).

The references in data/wrn_noise_conditional_refs.* were written by the official JAX module
(yang-song/score_sde `models/wideresnet_noise_conditional.py`, run with flax 0.12.8): its
WRN-28-10 parameter shapes for CIFAR-10, and a small WRN-10-2's parameters, inputs and logits.
"""
import contextlib
import json
import os
import shutil
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from score_jax import checkpoints as ckpt_lib
from score_jax import controllable_generation as cg
from score_jax import evaluate, loop, parallel, sampling, train_classifier, train_state, utils
from score_jax import sde as sde_lib
from score_jax.models import get_model, register_model
from score_jax.models import utils as mutils

REFS = os.path.join(os.path.dirname(__file__), "data", "wrn_noise_conditional_refs")


def classifier_config(blocks_per_group=1, channel_multiplier=1, image_size=8, channels=1):
    c = ml_collections.ConfigDict()
    c.seed = 1
    c.data = dict(dataset="DIGITS", image_size=image_size, num_channels=channels, centered=True)
    c.classifier = dict(name="wideresnet_noise_conditional", blocks_per_group=blocks_per_group,
                        channel_multiplier=channel_multiplier, num_classes=10, scale=1.0,
                        batch_size=8, n_iters=4, lr=1e-3, warmup=2, ema_rate=0.9, log_freq=1,
                        eval_freq=2, snapshot_freq=4, snapshot_freq_for_preemption=2)
    return c


def _wrn_num_params(blocks_per_group, k, num_classes, channels, temb=512):
    """Parameter count of the official noise-conditional WRN, counted layer by layer."""
    count = 128 + (256 * temb + temb) + (temb * temb + temb)  # Fourier W, two Dense
    count += 9 * channels * 16  # init_conv, no bias
    c_in = 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(blocks_per_group):
            count += 2 * c_in + 9 * c_in * width  # init_bn, conv1
            count += temb * width + width + 2 * width + 9 * width * width  # Dense, bn_2, conv2
            c_in = width
    return count + 2 * c_in + c_in * num_classes + num_classes  # pre-pool-bn, logits


def test_cifar10_wrn_28_10_has_the_official_parameter_tree():
    with open(REFS + ".json") as f:
        ref = json.load(f)
    config = classifier_config(blocks_per_group=4, channel_multiplier=10, image_size=32,
                               channels=3)
    variables = jax.eval_shape(lambda: mutils.init_classifier(jax.random.PRNGKey(0), config))
    shapes = {"/".join(k): list(v.shape)
              for k, v in traverse_util.flatten_dict(variables["params"]).items()}
    assert shapes == ref["wrn_28_10_cifar10_param_shapes"]
    n = sum(int(np.prod(s)) for s in shapes.values())
    # 36.5M of the plain WRN-28-10 plus the noise embedding (Fourier features, two Dense(512) and
    # a Dense(512 -> width) in each of the 12 blocks).
    assert n == ref["wrn_28_10_cifar10_num_params"] == _wrn_num_params(4, 10, 10, 3) == 38_913_242


def test_logits_match_the_official_module():
    ref = np.load(REFS + ".npz")
    params = traverse_util.unflatten_dict(
        {tuple(k.split("/")[1:]): ref[k] for k in ref.files if k.startswith("params/")})
    model = get_model("wideresnet_noise_conditional")(
        config=classifier_config(blocks_per_group=1, channel_multiplier=2))
    logits = model.apply({"params": params}, ref["x"], ref["sigmas"])
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-5, atol=1e-5)


def test_classifier_gradient_matches_finite_differences():
    """grad_x log p(y | x, t) against central differences along random directions (float64)."""
    config = classifier_config()
    sde = sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=10)
    with jax.enable_x64(True):
        variables = jax.tree.map(lambda v: v.astype(jnp.float64),
                                 mutils.init_classifier(jax.random.PRNGKey(0), config))
        logit_fn = mutils.get_logit_fn(sde, mutils.create_classifier(config), variables)
        grad_fn = mutils.get_classifier_grad_fn(logit_fn)
        x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1), jnp.float64)
        t = jnp.array([0.05, 0.4, 0.9], jnp.float64)
        labels = jnp.array([3, 0, 9])

        def log_p(x):  # (B,) per-example log-probabilities
            return jnp.take_along_axis(jax.nn.log_softmax(logit_fn(x, t)), labels[:, None],
                                       -1)[:, 0]

        grad = grad_fn(x, t, labels)
        assert grad.shape == x.shape and grad.dtype == jnp.float64
        for i in range(3):
            v = jax.random.normal(jax.random.PRNGKey(10 + i), x.shape, jnp.float64)
            h = 1e-5
            fd = (log_p(x + h * v) - log_p(x - h * v)) / (2 * h)
            analytic = jnp.sum((grad * v).reshape(3, -1), axis=-1)
            np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-8)
            assert np.all(np.abs(analytic) > 1e-4)


@register_model(name="tiny_conditional_test_net")
class TinyScoreNet(nn.Module):
    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x, labels, train=False):
        emb = nn.Dense(8)(jnp.log1p(jnp.asarray(labels, x.dtype))[:, None])
        return nn.Conv(x.shape[-1], (3, 3))(nn.swish(nn.Conv(8, (3, 3))(x)
                                                     + emb[:, None, None, :]))


def _score_config():
    c = classifier_config()
    # VE with sigma_max = 1: samples of a random network stay near the data range [-1, 1].
    c.model = dict(name="tiny_conditional_test_net", ema_rate=0.99, num_scales=6, sigma_min=0.01,
                   sigma_max=1.0)
    c.training = dict(sde="vesde", continuous=True, batch_size=8)
    c.optim = dict(optimizer="Adam", lr=1e-3, beta1=0.9, eps=1e-8, weight_decay=0.0, warmup=0,
                   grad_clip=1.0)
    c.sampling = dict(method="pc", predictor="euler_maruyama", corrector="langevin", snr=0.16,
                      n_steps_each=1, probability_flow=False, noise_removal=True,
                      class_label=ml_collections.config_dict.placeholder(int))
    c.eval = dict(batch_size=4, num_samples=4)
    c.data.update(centered=True)
    return c


def _samplers(config, scale, shape=(4, 8, 8, 1)):
    sde, eps = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    variables = mutils.init_model(jax.random.PRNGKey(2), config)
    cvars = mutils.init_classifier(jax.random.PRNGKey(3), config)
    args = dict(predictor="euler_maruyama", corrector="langevin", inverse_scaler=lambda x: x,
                snr=0.16, continuous=True, eps=eps)
    uncond = sampling.get_pc_sampler(sde, model, shape, **args)
    cond = cg.get_pc_conditional_sampler(sde, model, mutils.create_classifier(config), shape,
                                         scale=scale, **args)
    return uncond, cond, variables, cvars


def test_conditional_sampler_with_scale_zero_is_the_pc_sampler_bit_for_bit():
    config = _score_config()
    uncond, cond, variables, cvars = _samplers(config, scale=0.0)
    rng = jax.random.PRNGKey(4)
    labels = jnp.array([0, 3, 3, 9])
    x0, nfe0 = uncond(rng, variables)
    x1, nfe1 = cond(rng, variables, cvars, labels)
    np.testing.assert_array_equal(x0, x1)
    assert int(nfe0) == int(nfe1) == 12
    # The guidance is there at scale 1, and it depends on the labels.
    _, guided, _, _ = _samplers(config, scale=1.0)
    a = np.asarray(guided(rng, variables, cvars, labels)[0])
    b = np.asarray(guided(rng, variables, cvars, jnp.array([1, 3, 4, 9]))[0])
    assert np.all(np.isfinite(a)) and np.abs(a - x0).max() > 1e-3
    assert np.abs(a[0] - b[0]).max() > 1e-4
    with pytest.raises(ValueError, match=r"labels has shape \(3,\)"):
        guided(rng, variables, cvars, labels[:3])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir with a tiny score checkpoint and a classifier trained for 4 steps, plus a second
    classifier run interrupted after 2 steps and resumed."""
    workdir = str(tmp_path_factory.mktemp("cond"))
    config = _score_config()
    mesh = parallel.make_mesh()
    model_params = mutils.init_model(jax.random.PRNGKey(2), config)["params"]
    state = train_state.TrainState.create(model_params, train_state.get_optimizer(config),
                                          jax.random.PRNGKey(0))
    ck = ckpt_lib.Checkpointer(workdir)
    state = state.replace(step=jnp.asarray(5, jnp.int32))
    ck.save(jax.device_put(state, parallel.replicated(mesh)), preemption=False)
    ck.wait()
    ck.close()
    result = train_classifier.train_classifier(config, workdir)
    resumed_dir = str(tmp_path_factory.mktemp("resumed"))
    with config.unlocked():
        config.classifier.n_iters = 2
    train_classifier.train_classifier(config, resumed_dir)
    with config.unlocked():
        config.classifier.n_iters = 4
    resumed = train_classifier.train_classifier(config, resumed_dir)
    return config, workdir, resumed_dir, result, resumed


def test_train_classifier_logs_checkpoints_and_resumes_exactly(trained):
    config, workdir, resumed_dir, result, resumed = trained
    cdir = os.path.join(workdir, "classifier")
    assert result["updates"] == resumed["updates"] == 4
    assert sorted(os.listdir(os.path.join(cdir, "checkpoints"))) == ["4"]
    with open(os.path.join(cdir, "classifier.json")) as f:
        assert json.load(f)["data.image_size"] == 8
    with open(os.path.join(cdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [0, 1, 2, 3]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]
    # Warm-up lr * min(s / 2, 1); a cross-entropy near log(10) at the start.
    np.testing.assert_allclose([r["lr"] for r in train_rows], [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
    assert 1.0 < train_rows[0]["loss"] < 5.0
    a, _ = ckpt_lib.restore_classifier(config, workdir)
    b, _ = ckpt_lib.restore_classifier(config, resumed_dir)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(u, v)
    with open(os.path.join(resumed_dir, "classifier", "metrics.jsonl")) as f:
        resumed_rows = [json.loads(line) for line in f]
    rates = ("steps_per_s", "images_per_s")
    drop_rate = lambda rs: [{k: v for k, v in r.items() if k not in rates} for r in rs]
    assert drop_rate(resumed_rows) == drop_rate(rows)


def test_sample_mode_with_class_label(trained):
    config, workdir, _, _, _ = trained
    config = config.copy_and_resolve_references()
    config.sampling.class_label = 3
    result = evaluate.sample(config, workdir)
    samples = np.load(os.path.join(result["dir"], "samples_0.npz"))["samples"]
    assert samples.shape == (4, 8, 8, 1) and result["nfe"] == 12
    # Not the unconditional samples (same seed).
    config.sampling.class_label = None
    plain = evaluate.sample(config, workdir)
    other = np.load(os.path.join(plain["dir"], "samples_0.npz"))["samples"]
    assert 0.1 < np.mean((samples > 0) & (samples < 1))  # not all clipped
    assert np.abs(other - samples).max() > 1e-3
    # Digit 7 after digit 3 goes to its own folder; the 3s stay as they were.
    config.sampling.class_label = 7
    sevens = evaluate.sample(config, workdir)
    assert len({result["dir"], plain["dir"], sevens["dir"]}) == 3
    np.testing.assert_array_equal(
        np.load(os.path.join(result["dir"], "samples_0.npz"))["samples"], samples)
    with open(os.path.join(sevens["dir"], "settings.json")) as f:
        assert json.load(f)["sampling"]["class_label"] == 7


def test_bad_class_conditional_input_names_the_key_or_path(trained, tmp_path):
    config, workdir, _, _, _ = trained
    config = config.copy_and_resolve_references()
    for label in (10, -1):
        config.sampling.class_label = label
        with pytest.raises(ValueError, match=r"sampling.class_label=-?\d+ is outside \[0, "
                                             r"classifier.num_classes=10\)"):
            evaluate.sample(config, workdir)
    config.sampling.class_label = 3
    empty = str(tmp_path / "w")
    shutil.copytree(os.path.join(workdir, "checkpoints"), os.path.join(empty, "checkpoints"))
    with pytest.raises(FileNotFoundError, match=f"no classifier checkpoint in {empty}/classifier"):
        evaluate.sample(config, empty)
    config.data.image_size = 16
    with pytest.raises(ValueError, match=r"classifier.json was trained with data.image_size=8, "
                                         r"the config has data.image_size=16"):
        evaluate.sample(config, workdir)
    config.data.image_size = 8
    config.sampling.method = "ode"
    with pytest.raises(ValueError, match="sampling.method='ode'"):
        evaluate.sample(config, workdir)


def test_classifier_training_holds_a_lock_and_stops_on_sigterm_with_a_checkpoint(trained,
                                                                                 monkeypatch):
    config, _, resumed_dir, _, _ = trained
    config = config.copy_and_resolve_references()
    cdir = os.path.join(resumed_dir, "classifier")
    with utils.workdir_lock(cdir):
        with pytest.raises(RuntimeError, match="is in use by another training run"):
            train_classifier.train_classifier(config, resumed_dir)
    config.classifier.n_iters = 8

    @contextlib.contextmanager
    def sigterm_received():  # as if SIGTERM arrived during the first step
        yield [signal.SIGTERM]

    monkeypatch.setattr(loop, "stop_requests", sigterm_received)
    with pytest.raises(loop.Preempted, match="stopped by SIGTERM after classifier step 5"):
        train_classifier.train_classifier(config, resumed_dir)
    assert sorted(os.listdir(os.path.join(cdir, "checkpoints-meta"))) == ["5"]
