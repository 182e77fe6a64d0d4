"""Training the noise-conditional classifier: `python main.py --config C --workdir W --mode
train_classifier` (after, or beside, the main job in the same W).

The classifier `config.classifier.name` learns p(y | x_t, t) with a cross-entropy on labelled data
perturbed by the config's SDE, x_t = alpha_t x_0 + sigma_t z with t ~ U(eps, T) (eps = 1e-5, as the
score loss). Data pipeline, optimizer (Adam of `config.optim` with `classifier.lr` and
`classifier.warmup`), EMA (`classifier.ema_rate`), data parallelism, logging and exact resume are
those of `--mode train`; the randomness of update s is `fold_in(state.rng, s)`.

Settings (`config.classifier`): name, blocks_per_group, channel_multiplier, num_classes,
batch_size, n_iters, lr, warmup, ema_rate, log_freq, eval_freq, snapshot_freq,
snapshot_freq_for_preemption.

Outputs in `W/classifier/`: `checkpoints/`, `checkpoints-meta/` (`score_jax.checkpoints` layout),
`classifier.json` (what the checkpoints were trained for: architecture, image size, channels,
classes; checked by `restore_classifier`), `metrics.jsonl`, `tensorboard/`.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from score_jax import checkpoints as ckpt_lib
from score_jax import parallel
from score_jax import sde as sde_lib
from score_jax import train_state
from score_jax import utils
from score_jax.models import utils as mutils
from score_jax.train import MetricsLog, Preempted, _crossed, _stop_requests, _stop_signal

CLASSIFIER_DIR = "classifier"
_META = "classifier.json"
_EPS = 1e-5


def classifier_dir(workdir: str) -> str:
    return os.path.join(workdir, CLASSIFIER_DIR)


def _meta(config) -> dict:
    """What a classifier checkpoint depends on besides its parameter shapes (the WRN pools over the
    whole image, so a checkpoint loads at any image size)."""
    c = config.classifier
    return {"classifier.name": c.name, "classifier.blocks_per_group": int(c.blocks_per_group),
            "classifier.channel_multiplier": int(c.channel_multiplier),
            "classifier.num_classes": int(c.num_classes),
            "data.image_size": int(config.data.image_size),
            "data.num_channels": int(config.data.num_channels)}


def _check_meta(config, directory: str) -> None:
    meta_path = os.path.join(directory, _META)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"no classifier checkpoint in {directory} (no {_META}); train one "
                                "with --mode train_classifier in the same --workdir")
    with open(meta_path) as f:
        saved = json.load(f)
    for key, want in _meta(config).items():
        if saved.get(key) != want:
            raise ValueError(f"the classifier in {meta_path} was trained with {key}="
                             f"{saved.get(key)!r}, the config has {key}={want!r}")


def restore_classifier(config, workdir: str, sharding=None):
    """`(variables, step)` of the newest classifier checkpoint in `W/classifier/` (EMA weights).

    Raises FileNotFoundError naming the folder when there is none, and ValueError naming the key
    and `classifier.json` when the checkpoint was trained for another architecture, image size,
    channel count or number of classes than `config` asks for.
    """
    directory = classifier_dir(workdir)
    _check_meta(config, directory)
    params, step = ckpt_lib.restore_for_sampling(directory, sharding=sharding)
    return {"params": params}, int(step)


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
    """Jitted `(state, x, labels) -> (state, {'loss', 'accuracy', 'grad_norm', 'lr'})` and
    `(state, x, labels, rng) -> (loss, accuracy)` of the EMA weights, batch sharded over 'data'."""
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
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = train_state.ema_decay(ema_rate, state.step + 1)
        ema = jax.tree.map(lambda e, p: e - (1.0 - decay) * (e - p), state.ema_params, params)
        metrics = {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads),
                   "lr": lr_fn(state.step)}
        return state.replace(params=params, ema_params=ema, opt_state=opt_state,
                             step=state.step + 1), metrics

    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
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
    return jax.device_put(state, NamedSharding(mesh, P()))


def train_classifier(config, workdir: str) -> dict:
    """Trains the classifier in `W/classifier/` until `classifier.n_iters` updates, resuming from
    its newest checkpoint. Returns the last logged metrics and `updates`. As `--mode train`: holds
    `W/classifier/train.lock` (process 0) and stops on SIGTERM/SIGINT with a checkpoint
    (`train.Preempted`)."""
    if "classifier" not in config:
        raise ValueError("the config has no `classifier` settings (see configs/digits.py)")
    directory = classifier_dir(workdir)
    utils.check_workdir(directory)
    lock = (utils.workdir_lock(directory) if jax.process_index() == 0
            else contextlib.nullcontext())
    with lock, _stop_requests() as stop:
        return _train_classifier(config, directory, stop)


def _train_classifier(config, directory: str, stop: list) -> dict:
    from score_jax import datasets

    c = config.classifier
    local_batch = parallel.check_batch_size(int(c.batch_size), what="classifier.batch_size")
    is_main = jax.process_index() == 0
    mesh = parallel.make_mesh()
    classifier = mutils.create_classifier(config)
    state = create_train_state(config, mesh)
    checkpointer = ckpt_lib.Checkpointer(directory)
    restored = checkpointer.restore(state)
    if restored is None:
        if is_main:
            with utils.atomic_path(os.path.join(directory, _META)) as tmp, open(tmp, "w") as f:
                json.dump(_meta(config), f, indent=1)
    else:
        _check_meta(config, directory)
        state = restored
    start, n_iters = int(state.step), int(c.n_iters)

    scaler = datasets.get_data_scaler(config)
    train_it = datasets.get_dataset(config, split="train", batch_size=local_batch,
                                    start_step=start)
    evals_done = sum(_crossed(k, k + 1, c.eval_freq) for k in range(start))
    eval_it = datasets.get_dataset(config, split="eval", batch_size=local_batch,
                                   start_step=evals_done)
    train_step, eval_step = get_train_fns(config, classifier, mesh)
    batch = NamedSharding(mesh, P("data"))
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

    writer = None
    if is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(directory, "tensorboard"))
    metrics_log = MetricsLog(directory, start, is_main)
    from tqdm import tqdm
    bar = tqdm(total=n_iters, initial=start, disable=not is_main, unit="step", dynamic_ncols=True)

    last, step = {}, start
    tick, tick_step = time.perf_counter(), start
    try:
        while step < n_iters:
            state, metrics = train_step(state, *device_batch(next(train_it)))
            if step % c.log_freq == 0:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not np.isfinite(metrics["loss"]):
                    raise FloatingPointError(
                        f"classifier loss is {metrics['loss']} at step {step}; stopped without "
                        f"saving. Last good checkpoint: step {checkpointer.latest_step()} in "
                        f"{directory}")
                now = time.perf_counter()
                rate = (step + 1 - tick_step) / max(now - tick, 1e-9)
                tick, tick_step = now, step + 1
                last = {"step": step, **metrics, "steps_per_s": rate}
                metrics_log.write(last)
                if writer is not None:
                    for k, v in last.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
                bar.set_postfix(loss=f"{metrics['loss']:.4g}", acc=f"{metrics['accuracy']:.3f}")
            before, step = step, step + 1
            bar.update(1)
            if _crossed(before, step, c.eval_freq):
                loss, acc = jax.device_get(eval_step(state, *device_batch(next(eval_it)),
                                                     jax.random.fold_in(eval_rng, step)))
                row = {"step": step, "eval_loss": float(loss), "eval_accuracy": float(acc)}
                metrics_log.write(row)
                if writer is not None:
                    writer.add_scalar("eval/loss", row["eval_loss"], step)
                    writer.add_scalar("eval/accuracy", row["eval_accuracy"], step)
            snapshot = _crossed(before, step, c.snapshot_freq) or step >= n_iters
            signum = _stop_signal(stop)
            if (_crossed(before, step, c.snapshot_freq_for_preemption) or signum) and not snapshot:
                checkpointer.save(state, preemption=True)
            if snapshot:
                checkpointer.save(state, preemption=False)
            if signum and step < n_iters:
                checkpointer.wait()
                raise Preempted(
                    f"stopped by {signal.Signals(signum).name} after classifier step {step}; its "
                    f"checkpoint is written in {directory}: run the same command to resume", signum)
    finally:
        bar.close()
        checkpointer.wait()
        checkpointer.close()
        if writer is not None:
            writer.close()
    return {**last, "updates": step}
