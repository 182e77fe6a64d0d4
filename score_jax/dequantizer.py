"""Variational dequantization (Ho et al. 2019; Song, Durkan, Murray, Ermon 2021): a flow q(u | x)
over the offsets u in (0, 1)^D inside each intensity bin, and the bound on discrete bits/dim
-log P(x) <= E_{u ~ q}[-log p((x + u)/256) + log q(u | x)].

h = CNN(x); y = mu(h) + exp(s(h)) eps; `deq.num_layers` affine checkerboard couplings on y given h;
u = sigmoid(y). `--mode train_dequantizer` fits it on the frozen score model (-log p replaced by
`likelihood.elbo_nats`, one t per example) and writes `W/dequantizer/dequantizer.msgpack`: the
EMA parameters and the record of what they fit, in one atomic file.
"""
from __future__ import annotations

import collections
import json
import os
import time

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_jax import utils

DEQ_DIR = "dequantizer"
DEQ_FILE = "dequantizer.msgpack"
DEQUANTIZERS = ("uniform", "variational")


def _checkerboard(shape, parity: int) -> jax.Array:
    h, w = shape[1], shape[2]
    board = (np.arange(h)[:, None] + np.arange(w)[None, :] + parity) % 2
    return jnp.asarray(board, jnp.float32)[None, :, :, None]


class Dequantizer(nn.Module):
    """`(x, eps) -> (u, log q(u|x))`: x (B, H, W, C) bins scaled like the data, eps ~ N(0, I)
    of x's shape; u in (0, 1) of x's shape, log q (B,) in nats."""

    nf: int = 32
    num_layers: int = 2

    @nn.compact
    def __call__(self, x, eps):
        channels = x.shape[-1]
        conv = lambda n, name: nn.Conv(n, (3, 3), padding="SAME", name=name)
        h = nn.silu(conv(self.nf, "embed0")(x))
        h = nn.silu(conv(self.nf, "embed1")(h))
        # Zero-initialised heads: the flow starts as u = sigmoid(eps).
        head = lambda n, name: nn.Conv(n, (3, 3), padding="SAME", name=name,
                                       kernel_init=nn.initializers.zeros)
        base = head(2 * channels, "base")(h)
        mu, log_s = base[..., :channels], jnp.tanh(base[..., channels:]) * 3.0
        y = mu + jnp.exp(log_s) * eps
        log_det = jnp.sum(log_s, axis=(1, 2, 3))
        for i in range(self.num_layers):
            mask = _checkerboard(x.shape, i % 2)
            g = nn.silu(conv(self.nf, f"coupling{i}_0")(jnp.concatenate([h, y * mask], -1)))
            out = head(2 * channels, f"coupling{i}_out")(g)
            shift, log_scale = out[..., :channels], jnp.tanh(out[..., channels:]) * 2.0
            y = mask * y + (1.0 - mask) * (y * jnp.exp(log_scale) + shift)
            log_det = log_det + jnp.sum((1.0 - mask) * log_scale, axis=(1, 2, 3))
        u = jax.nn.sigmoid(y)
        log_det = log_det + jnp.sum(jax.nn.log_sigmoid(y) + jax.nn.log_sigmoid(-y), axis=(1, 2, 3))
        log_normal = -0.5 * jnp.sum(eps**2 + np.log(2 * np.pi), axis=(1, 2, 3))
        return u, log_normal - log_det


def check_dequantizer_name(config) -> str:
    name = str(config.eval.get("dequantizer", "uniform"))
    if name not in DEQUANTIZERS:
        raise ValueError(f"eval.dequantizer={name!r} is unknown; valid: {list(DEQUANTIZERS)}")
    return name


def _settings(config):
    if "deq" not in config:
        raise ValueError("the config has no `deq` settings (the variational dequantizer; see "
                         "configs/digits.py)")
    return config.deq


def create_dequantizer(config) -> Dequantizer:
    d = _settings(config)
    return Dequantizer(nf=int(d.nf), num_layers=int(d.num_layers))


def _record(config, score_step: int) -> dict:
    """What a trained dequantizer must match to be used with `config` and the score checkpoint."""
    d = _settings(config)
    return {"deq.nf": int(d.nf), "deq.num_layers": int(d.num_layers),
            "data.dataset": str(config.data.dataset),
            "data.image_size": int(config.data.image_size),
            "data.num_channels": int(config.data.num_channels),
            "data.centered": bool(config.data.centered), "score_step": int(score_step)}


def discrete_centers(image) -> np.ndarray:
    """Bin index (0..255, float32) of images in [0, 1] read without dequantization (x/255)."""
    return np.round(np.asarray(image, np.float32) * 255.0)


def dequantize(config, params, rng, bins):
    """`(data in [0, 1] = (bins + u)/256, log q(u|x) (B,))` with u ~ q(u | bins); jittable."""
    from score_jax import datasets

    scaler = datasets.get_data_scaler(config)
    eps = jax.random.normal(rng, bins.shape)
    u, log_q = create_dequantizer(config).apply({"params": params}, scaler((bins + 0.5) / 256.0),
                                                eps)
    return (bins + u) / 256.0, log_q


def restore_dequantizer(config, workdir: str, score_step: int):
    """The parameters of `W/dequantizer/dequantizer.msgpack`. FileNotFoundError naming the file
    if missing; ValueError naming the key and the file if it fits another config or checkpoint."""
    path = os.path.join(workdir, DEQ_DIR, DEQ_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"eval.dequantizer='variational' needs a trained dequantizer, {path}, which does not "
            "exist; train one with --mode train_dequantizer in the same --workdir")
    with open(path, "rb") as f:
        saved = flax.serialization.msgpack_restore(f.read())
    for key, want in _record(config, score_step).items():
        if saved["record"].get(key) != want:
            raise ValueError(f"the dequantizer in {path} was trained with {key}="
                             f"{saved['record'].get(key)!r}, but the config and checkpoint here "
                             f"give {key}={want!r}; retrain it with --mode train_dequantizer")
    return flax.serialization.from_state_dict(_init_params(config, jax.random.PRNGKey(0)),
                                              saved["params"])


def _init_params(config, rng):
    shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
    return create_dequantizer(config).init(rng, jnp.zeros(shape), jnp.zeros(shape))["params"]


def train_dequantizer(config, workdir: str) -> dict:
    """Fits q(u|x) to the frozen EMA score model of W's newest checkpoint: `deq.n_iters` Adam steps
    (lr `deq.lr`, batch `deq.batch_size` of the train split) holding `W/train.lock`, checkpointed
    every `deq.snapshot_freq` steps and on SIGTERM in `W/dequantizer/train_<key>/` (`loop.run`),
    so a rerun resumes. Returns {'updates', 'score_step', 'bound_bpd' (mean training bound of the
    last `deq.log_freq` steps run; None if none ran), 'path', 'seconds'}."""
    from score_jax import checkpoints as ckpt_lib
    from score_jax import datasets, likelihood, loop, train_state
    from score_jax import sde as sde_lib
    from score_jax.models import utils as mutils

    d = _settings(config)
    if jax.process_count() > 1:
        raise ValueError("--mode train_dequantizer runs in one process (a small flow on one "
                         f"host); got {jax.process_count()} processes")
    begin = time.perf_counter()
    with utils.workdir_lock(workdir):
        ema_params, score_step = ckpt_lib.restore_for_sampling(workdir)
        record = _record(config, score_step)
        # A run resumes only work of the same score weights and training settings.
        directory = utils.settings_dir(os.path.join(workdir, DEQ_DIR), "train", {
            **record, "score_weights": utils.tree_fingerprint(ema_params), "seed": config.seed,
            **{f"deq.{k}": d[k] for k in ("lr", "batch_size", "ema_rate")}})
        sde, _ = sde_lib.get_sde(config)
        score_fn = mutils.get_score_fn(sde, mutils.create_model(config), {"params": ema_params},
                                       train=False, continuous=True)
        scaler = datasets.get_data_scaler(config)
        offset = 7.0 - float(datasets.get_data_inverse_scaler(config)(-1.0))
        optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(float(d.lr)))

        def loss_fn(params, bins, key):
            deq_key, elbo_key = jax.random.split(key)
            data, log_q = dequantize(config, params, deq_key, bins)
            nll = likelihood.elbo_nats(sde, score_fn, elbo_key, scaler(data), num_t=1)
            dims = int(np.prod(bins.shape[1:]))
            return jnp.mean((nll + log_q) / np.log(2.0) / dims) + offset

        @jax.jit
        def train_step(state, bins):
            loss, grads = jax.value_and_grad(loss_fn)(
                state.params, bins, jax.random.fold_in(state.rng, state.step))
            state, grad_norm, finite = train_state.apply_update(state, grads, loss, optimizer,
                                                                float(d.ema_rate))
            return state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}

        def start(step: int, restored: bool) -> loop.Task:
            batches = datasets.get_dataset(config, split="train", batch_size=int(d.batch_size),
                                           uniform_dequantization=False, start_step=step)

            def device_call(state):
                state, metrics = train_step(state, discrete_centers(next(batches)["image"]))
                recent.append(metrics["loss"])
                return state, jax.tree.map(lambda v: v[None], metrics)

            return loop.Task(device_call)

        recent = collections.deque(maxlen=int(d.log_freq))  # losses of the last steps run
        init_rng, state_rng = jax.random.split(jax.random.fold_in(
            jax.random.PRNGKey(config.seed), 11))
        state = train_state.TrainState.create(_init_params(config, init_rng), optimizer,
                                              state_rng)
        schedule = loop.Schedule(int(d.n_iters), int(d.log_freq), eval_freq=0, snapshot_freq=0,
                                 preemption_freq=int(d.snapshot_freq))
        loop.run(directory, state, schedule, start, batch_size=int(d.batch_size),
                 what="dequantizer step")
        params, updates = ckpt_lib.restore_for_sampling(directory)
        path = os.path.join(workdir, DEQ_DIR, DEQ_FILE)
        with utils.atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(flax.serialization.msgpack_serialize({
                "record": {**record, "updates": updates},
                "params": flax.serialization.to_state_dict(jax.device_get(params))}))
    result = {"updates": updates, "score_step": int(score_step),
              "bound_bpd": float(np.mean(recent)) if recent else None, "path": path,
              "seconds": time.perf_counter() - begin}
    print(json.dumps(result))
    return result
