"""Variational dequantization (Ho et al. 2019, Flow++; used by Song, Durkan, Murray, Ermon 2021):
a small conditional flow q(u | x) over the offsets u in (0, 1)^D inside each intensity bin, and the
bound it gives on the discrete data's bits/dim,

    -log P(x) <= E_{u ~ q(u|x)}[-log p((x + u)/256) + log q(u | x)]   (in [0, 1] units, D log 256
                                                                        folded into the offset)

where uniform dequantization is q = 1. `python main.py --config C --workdir W --mode
train_dequantizer` trains it on the frozen score model of W (its EMA weights), minimising that
bound with -log p replaced by the score model's variational bound (`likelihood.elbo_nats`, one t
per example): cheap and differentiable in u, where the exact ODE likelihood is neither. It is
trained after the score model, not jointly: the bound it minimises is then exactly the one
`--mode likelihood` reports, and training it needs no change to the score model's training loop.
`--mode likelihood` with `eval.dequantizer='variational'` evaluates the exact ODE likelihood (and
the bound) at u ~ q(u|x).

The flow, for discrete x (scaled like the data) and eps ~ N(0, I): h = CNN(x); y = mu(h) +
exp(s(h)) eps; `deq.num_layers` affine couplings on y with checkerboard masks, conditioned on h;
u = sigmoid(y). log q(u|x) = log N(eps) - sum s - sum of the couplings' log-scales - sum log
sigmoid'(y).

Outputs in `W/dequantizer/`: `params.msgpack` (the EMA parameters) and `dequantizer.json` (what
they were trained for: the `deq.*` architecture, data shape and scaling, the score checkpoint
step; checked on restore).
"""
from __future__ import annotations

import json
import logging
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
_META = "dequantizer.json"
_PARAMS = "params.msgpack"
DEQUANTIZERS = ("uniform", "variational")
log = logging.getLogger(__name__)


def _checkerboard(shape, parity: int) -> jax.Array:
    h, w = shape[1], shape[2]
    board = (np.arange(h)[:, None] + np.arange(w)[None, :] + parity) % 2
    return jnp.asarray(board, jnp.float32)[None, :, :, None]


class Dequantizer(nn.Module):
    """`(x, eps) -> (u, log_q)`: x (B, H, W, C) discrete data scaled like the training data,
    eps (B, H, W, C) standard normal; u in (0, 1) of x's shape, log q(u | x) (B,) in nats."""

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


def _meta(config, score_step: int) -> dict:
    d = _settings(config)
    return {"deq.nf": int(d.nf), "deq.num_layers": int(d.num_layers),
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
    """The trained dequantizer's parameters from `W/dequantizer/`. FileNotFoundError naming the
    folder when there is none; ValueError naming the key and the file when it was trained for
    another config (architecture, data shape or scaling) or another score checkpoint."""
    directory = os.path.join(workdir, DEQ_DIR)
    meta_path, params_path = os.path.join(directory, _META), os.path.join(directory, _PARAMS)
    if not (os.path.exists(meta_path) and os.path.exists(params_path)):
        raise FileNotFoundError(
            f"eval.dequantizer='variational' needs a trained dequantizer in {directory} (no "
            f"{_META} / {_PARAMS}); train one with --mode train_dequantizer in the same --workdir")
    with open(meta_path) as f:
        saved = json.load(f)
    for key, want in _meta(config, score_step).items():
        if saved.get(key) != want:
            raise ValueError(f"the dequantizer in {meta_path} was trained with {key}="
                             f"{saved.get(key)!r}, but the config and checkpoint here give "
                             f"{key}={want!r}; retrain it with --mode train_dequantizer")
    template = _init_params(config, jax.random.PRNGKey(0))
    with open(params_path, "rb") as f:
        return flax.serialization.from_bytes(template, f.read())


def _init_params(config, rng):
    shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
    return create_dequantizer(config).init(rng, jnp.zeros(shape), jnp.zeros(shape))["params"]


def train_dequantizer(config, workdir: str) -> dict:
    """Trains q(u|x) on the frozen score model of `W` (newest checkpoint, EMA weights) for
    `deq.n_iters` Adam steps (lr `deq.lr`, batch `deq.batch_size` of the train split) minimising
    the bound on bits/dim; writes `W/dequantizer/` atomically at the end and returns
    `{'updates', 'bound_bpd' (mean of the last `deq.log_freq` steps), 'seconds'}`."""
    from score_jax import checkpoints as ckpt_lib
    from score_jax import datasets, likelihood
    from score_jax import sde as sde_lib
    from score_jax.models import utils as mutils

    d = _settings(config)
    if jax.process_count() > 1:
        raise ValueError("--mode train_dequantizer runs in one process (a small flow on one "
                         f"host); got {jax.process_count()} processes")
    sde, _ = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    ema_params, score_step = ckpt_lib.restore_for_sampling(workdir)
    score_vars = {"params": ema_params}
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    scaler = datasets.get_data_scaler(config)
    offset = 7.0 - float(inverse_scaler(-1.0))
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 11)
    params = _init_params(config, jax.random.fold_in(rng, 0))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(float(d.lr)))
    opt_state = optimizer.init(params)
    ema = params

    def loss_fn(params, bins, key):
        deq_key, elbo_key = jax.random.split(key)
        data, log_q = dequantize(config, params, deq_key, bins)
        score_fn = mutils.get_score_fn(sde, model, score_vars, train=False, continuous=True)
        nll = likelihood.elbo_nats(sde, score_fn, elbo_key, scaler(data), num_t=1)
        dims = int(np.prod(bins.shape[1:]))
        return jnp.mean((nll + log_q) / np.log(2.0) / dims) + offset

    @jax.jit
    def step(params, opt_state, ema, bins, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, bins, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: e - (1.0 - float(d.ema_rate)) * (e - p), ema, params)
        return params, opt_state, ema, loss

    train_it = datasets.get_dataset(config, split="train", batch_size=int(d.batch_size),
                                    uniform_dequantization=False)
    losses, start = [], time.perf_counter()
    for i in range(int(d.n_iters)):
        bins = jnp.asarray(discrete_centers(next(train_it)["image"]))
        params, opt_state, ema, loss = step(params, opt_state, ema, bins,
                                            jax.random.fold_in(rng, i + 1))
        losses.append(float(loss))
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(f"dequantizer loss is {losses[-1]} at step {i}; nothing "
                                     "written. Lower deq.lr")
        if (i + 1) % int(d.log_freq) == 0:
            log.info("dequantizer step %d: bound %.4f bits/dim", i + 1,
                     np.mean(losses[-int(d.log_freq):]))
    directory = os.path.join(workdir, DEQ_DIR)
    os.makedirs(directory, exist_ok=True)
    with utils.atomic_path(os.path.join(directory, _PARAMS)) as tmp, open(tmp, "wb") as f:
        f.write(flax.serialization.to_bytes(ema))
    with utils.atomic_path(os.path.join(directory, _META)) as tmp, open(tmp, "w") as f:
        json.dump(_meta(config, int(score_step)), f, indent=1)
    result = {"updates": int(d.n_iters), "score_step": int(score_step),
              "bound_bpd": float(np.mean(losses[-int(d.log_freq):])),
              "seconds": time.perf_counter() - start}
    print(json.dumps(result))
    return result
