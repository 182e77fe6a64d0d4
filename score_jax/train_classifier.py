"""`--mode train_classifier`: the noise-conditional classifier p(y | x_t, t), trained with a
cross-entropy on labelled data perturbed by the config's SDE at t ~ U(1e-5, T), by the loop of
`--mode train` (`config.classifier`: lr, warmup, ema_rate, batch_size, n_iters, frequencies).
Writes `W/classifier/`: checkpoints, `classifier.json` (what they were trained for),
`metrics.jsonl`, `tensorboard/`."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from score_jax import checkpoints as ckpt_lib
from score_jax import loop, parallel, train_state, utils
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

_EPS = 1e-5


def _optimizer_config(config) -> ml_collections.ConfigDict:
    """`config` with `optim.lr`, `optim.warmup` taken from `classifier.lr`, `classifier.warmup`."""
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.optim.lr = float(config.classifier.lr)
        cfg.optim.warmup = int(config.classifier.warmup)
    return cfg


def get_loss_fn(sde, classifier):
    """`loss_fn(params, x, labels, rng) -> (mean cross-entropy, accuracy)` on x (B, H, W, C) scaled
    data perturbed at t ~ U(eps, T)."""

    def loss_fn(params, x, labels, rng):
        t_rng, z_rng = jax.random.split(rng)
        t = jax.random.uniform(t_rng, (x.shape[0],), x.dtype) * (sde.T - _EPS) + _EPS
        mean, std = sde.marginal_prob(x, t)
        x_t = mean + sde_lib.batch_mul(std, jax.random.normal(z_rng, x.shape, x.dtype))
        logits = mutils.get_logit_fn(sde, classifier, {"params": params})(x_t, t)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    return loss_fn


def get_train_fns(config, classifier, mesh):
    """Jitted `(state, x, labels) -> (state, {'loss', 'accuracy', 'grad_norm', 'lr', 'finite'})`
    and `(state, x, labels, rng) -> (loss, accuracy)` of the EMA weights; batch on 'data'."""
    sde, _ = sde_lib.get_sde(config)
    loss_fn = get_loss_fn(sde, classifier)
    opt_config = _optimizer_config(config)
    optimizer = train_state.get_optimizer(opt_config)
    lr_fn = train_state.learning_rate_fn(opt_config)
    ema_rate = float(config.classifier.ema_rate)

    def train_step(state, x, labels):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x, labels,
                                                                        rng)
        new_state, grad_norm, finite = train_state.apply_update(state, grads, loss, optimizer,
                                                                ema_rate)
        return new_state, {"loss": loss, "accuracy": acc, "grad_norm": grad_norm,
                           "lr": lr_fn(state.step), "finite": finite}

    replicated, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    train = jax.jit(train_step, in_shardings=(replicated, batch, batch),
                    out_shardings=(replicated, replicated), donate_argnums=(0,))
    evaluate = jax.jit(lambda state, x, labels, rng: loss_fn(state.ema_params, x, labels, rng),
                       in_shardings=(replicated, batch, batch, replicated),
                       out_shardings=replicated)
    return train, evaluate


def create_train_state(config, mesh):
    """A fresh classifier `TrainState` (init from `config.seed`), replicated on `mesh`."""
    init_rng, state_rng = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), 7))
    variables = jax.jit(lambda r: mutils.init_classifier(r, config))(init_rng)
    state = train_state.TrainState.create(
        variables["params"], train_state.get_optimizer(_optimizer_config(config)), state_rng)
    return jax.device_put(state, parallel.replicated(mesh))


def train_classifier(config, workdir: str) -> dict:
    """Trains in `W/classifier/` to `classifier.n_iters` updates, resuming from its newest
    checkpoint (as `--mode train`); returns the last logged metrics and `updates`."""
    from score_jax import datasets

    if "classifier" not in config:
        raise ValueError("the config has no `classifier` settings (see configs/digits.py)")
    directory = ckpt_lib.classifier_dir(workdir)
    utils.check_workdir(directory)
    c = config.classifier
    local_batch = parallel.check_batch_size(int(c.batch_size), what="classifier.batch_size")
    mesh = parallel.make_mesh()
    classifier = mutils.create_classifier(config)
    scaler = datasets.get_data_scaler(config)
    batch = parallel.batch_sharding(mesh)
    eval_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 8)

    def device_batch(item):
        if "label" not in item:
            raise ValueError(f"data.dataset={config.data.dataset!r} has no labels; the "
                             "classifier needs a labelled dataset")
        x = np.asarray(item["image"], np.float32)
        want = (config.data.image_size, config.data.image_size, config.data.num_channels)
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"the dataset yields images of shape {x.shape[1:]}, the config asks "
                             f"for (data.image_size, data.image_size, data.num_channels) = {want}")
        labels = np.asarray(item["label"], np.int32)
        return parallel.global_batch(scaler(x), batch), parallel.global_batch(labels, batch)

    def start(step: int, restored: bool) -> loop.Task:
        if restored:
            ckpt_lib.check_classifier_meta(config, directory)
        elif jax.process_index() == 0:
            with utils.atomic_path(os.path.join(directory, ckpt_lib.CLASSIFIER_META)) as tmp, \
                    open(tmp, "w") as f:
                json.dump(ckpt_lib.classifier_meta(config), f, indent=1)
        train_it = datasets.get_dataset(config, split="train", batch_size=local_batch,
                                        start_step=step)
        eval_it = datasets.get_dataset(config, split="eval", batch_size=local_batch,
                                       start_step=loop.evals_before(step, 1, c.eval_freq))
        train_step, eval_step = get_train_fns(config, classifier, mesh)

        def device_call(state):
            state, metrics = train_step(state, *device_batch(next(train_it)))
            return state, jax.tree.map(lambda v: v[None], metrics)

        def evaluate(state, step):
            loss, acc = eval_step(state, *device_batch(next(eval_it)),
                                  jax.random.fold_in(eval_rng, step))
            return {"eval_loss": loss, "eval_accuracy": acc}

        return loop.Task(device_call, evaluate)

    schedule = loop.Schedule(int(c.n_iters), int(c.log_freq), int(c.eval_freq),
                             int(c.snapshot_freq), int(c.snapshot_freq_for_preemption))
    return loop.run(directory, create_train_state(config, mesh), schedule, start,
                    batch_size=int(c.batch_size), what="classifier step")
