"""Training state, optimizer (torch's Adam as one optax transformation), EMA, `apply_update`."""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any


def learning_rate_fn(config) -> Callable[[jax.Array], jax.Array]:
    """lr(step) = optim.lr * min(step / warmup, 1) (optim.lr if warmup <= 0); step: updates done."""
    lr, warmup = float(config.optim.lr), float(config.optim.warmup)
    if warmup > 0:
        return lambda step: lr * jnp.minimum(jnp.asarray(step, jnp.float32) / warmup, 1.0)
    return lambda step: jnp.full((), lr, jnp.float32)


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """`torch.nn.utils.clip_grad_norm_`: g * min(max_norm / (|g| + 1e-6), 1)."""

    def update_fn(updates, state, params=None):
        del params
        coef = jnp.minimum(max_norm / (optax.tree.norm(updates) + 1e-6), 1.0)
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def get_optimizer(config) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, (beta1, 0.999), eps, weight_decay), warm-up, clip if grad_clip >= 0."""
    if config.optim.optimizer != "Adam":
        raise ValueError(f"optim.optimizer={config.optim.optimizer!r} is not supported; "
                         "valid: Adam")
    parts = []
    if float(config.optim.grad_clip) >= 0:
        parts.append(clip_by_global_norm_torch(float(config.optim.grad_clip)))
    if float(config.optim.weight_decay) != 0:
        # torch's Adam weight decay is L2 on the gradient (coupled), before the moments.
        parts.append(optax.add_decayed_weights(float(config.optim.weight_decay)))
    parts.append(optax.scale_by_adam(b1=float(config.optim.beta1), b2=0.999,
                                     eps=float(config.optim.eps)))
    parts.append(optax.scale_by_learning_rate(learning_rate_fn(config)))
    return optax.chain(*parts)


def ema_decay(ema_rate: float, num_updates: jax.Array) -> jax.Array:
    """min(ema_rate, (1 + n) / (10 + n)) after n = `num_updates` (counting the current one)."""
    n = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(ema_rate, (1.0 + n) / (10.0 + n))


def apply_update(state: "TrainState", grads: PyTree, loss: jax.Array,
                 optimizer: optax.GradientTransformation, ema_rate: float):
    """`(new state, grad_norm, finite)`: optimizer step, step + 1, EMA; a non-finite loss, gradient
    or update is dropped on device (only the step advances)."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    decay = ema_decay(ema_rate, step)
    ema_params = jax.tree.map(lambda e, p: e - (1.0 - decay) * (e - p), state.ema_params, params)
    grad_norm = optax.tree.norm(grads)
    # A finite update keeps the parameters and their EMA finite. (Testing every parameter and EMA
    # leaf instead made XLA:CPU compile the step 15-30x slower.)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
    params, ema_params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old), (params, ema_params, opt_state),
        (state.params, state.ema_params, state.opt_state))
    new_state = state.replace(params=params, ema_params=ema_params, opt_state=opt_state, step=step)
    return new_state, grad_norm, finite


class TrainState(flax.struct.PyTreeNode):
    """int32 `step`: updates applied; update s draws from `fold_in(rng, s)`, rng uint32 (2,)."""

    params: PyTree
    ema_params: PyTree
    opt_state: PyTree
    step: jax.Array
    rng: jax.Array

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation, rng) -> "TrainState":
        return cls(params=params, ema_params=jax.tree.map(jnp.copy, params),
                   opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32),
                   rng=jnp.asarray(rng))
