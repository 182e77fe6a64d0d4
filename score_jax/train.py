"""Training: `python main.py --config C --workdir W --mode train` (outputs and faults: README).

One jitted update with the batch sharded over the 'data' mesh and the `TrainState` replicated,
`training.n_jitted_steps` of them per device call, run by `score_jax.loop`. Update s draws from
fold_in(key(seed), s) and the data is a function of (seed, step): a resumed run computes exactly
what an uninterrupted one would."""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import loop, losses, parallel, train_state, utils
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils


def create_train_state(config, mesh):
    """A fresh `TrainState` (network init from `config.seed`), replicated on `mesh`."""
    rng = jax.random.PRNGKey(config.seed)
    init_rng, state_rng = jax.random.split(rng)
    variables = jax.jit(lambda r: mutils.init_model(r, config))(init_rng)
    extra = set(variables) - {"params"}
    if extra:
        raise ValueError(f"model {config.model.name!r} has variable collections {sorted(extra)} "
                         "besides 'params'; training supports parameters only")
    state = train_state.TrainState.create(variables["params"], train_state.get_optimizer(config),
                                          state_rng)
    return jax.device_put(state, parallel.replicated(mesh))


def get_train_fns(config, model, mesh, use_scan: bool | None = None):
    """Jitted `(state, x (n_jitted_steps, B, H, W, C)) -> (state, StepMetrics of (n_jitted_steps,))`
    and `(state, x (B, H, W, C), rng) -> eval loss`; `use_scan`: fuse by lax.scan (same numbers)."""
    sde, _ = sde_lib.get_sde(config)
    t = config.training
    kwargs = dict(reduce_mean=t.reduce_mean, continuous=t.continuous,
                  likelihood_weighting=t.likelihood_weighting,
                  importance_weighting=bool(t.get("importance_weighting", False)))
    step_fn = losses.get_step_fn(sde, model, train=True,
                                 optimize_fn=train_state.get_optimizer(config),
                                 ema_rate=config.model.ema_rate,
                                 lr_fn=train_state.learning_rate_fn(config), **kwargs)
    eval_fn = losses.get_step_fn(sde, model, train=False, **kwargs)

    if use_scan is None:
        # XLA:CPU runs the step ~10x slower inside the scan's while loop (1.9 s vs 0.16 s, DDPM).
        use_scan = jax.default_backend() != "cpu"

    def multi_step(state, xs):
        if use_scan:
            return jax.lax.scan(step_fn, state, xs)
        metrics = []
        for i in range(xs.shape[0]):
            state, m = step_fn(state, xs[i])
            metrics.append(m)
        return state, jax.tree.map(lambda *v: jnp.stack(v), *metrics)

    replicated = parallel.replicated(mesh)
    train_step = jax.jit(multi_step, in_shardings=(replicated, parallel.batch_sharding(mesh, 1)),
                         out_shardings=(replicated, replicated), donate_argnums=(0,))
    eval_step = jax.jit(eval_fn, in_shardings=(replicated, parallel.batch_sharding(mesh),
                                               replicated), out_shardings=replicated)
    return train_step, eval_step


def _data_iterators(config, start_step: int, local_batch: int):
    """Train iterator of (n_jitted_steps, local_batch, H, W, C) float32 in [0, 1] from update
    `start_step`, and eval iterator of (local_batch, H, W, C), one batch per evaluation."""
    from score_jax import datasets

    t = config.training
    train_it = datasets.get_dataset(config, split="train", batch_size=local_batch,
                                    start_step=start_step, additional_dim=int(t.n_jitted_steps))
    eval_it = datasets.get_dataset(
        config, split="eval", batch_size=local_batch,
        # Skip the evaluations already done: a resumed run evaluates on the same batches.
        start_step=loop.evals_before(start_step, int(t.n_jitted_steps), t.eval_freq))
    return train_it, eval_it


def _check_images(x: np.ndarray, config) -> None:
    want = (config.data.image_size, config.data.image_size, config.data.num_channels)
    if tuple(x.shape[-3:]) != want:
        raise ValueError(
            f"the dataset {config.data.dataset!r} yields images of shape {tuple(x.shape[-3:])} "
            f"but the config asks for (image_size, image_size, num_channels) = {want}")


def _write_snapshot_samples(samples, workdir: str, step: int) -> None:
    """`W/samples/iter_<step>.{npz,png}`; a grid with NaN/inf is logged, not written."""
    from score_jax import sampling

    samples = np.asarray(jax.device_get(samples))
    try:
        sampling.check_finite(samples)
    except FloatingPointError as e:  # a bad grid early in training is no reason to stop
        logging.getLogger(__name__).warning("step %d: sample grid not written: %s", step, e)
        return
    utils.save_samples(samples, os.path.join(workdir, "samples", f"iter_{step}"))


def train(config, workdir: str) -> dict:
    """Trains until `training.n_iters` updates, resuming from W's newest intact checkpoint; returns
    the last logged metrics and `updates` done. Raises `loop.Preempted` on SIGTERM/SIGINT."""
    from score_jax import datasets

    utils.check_workdir(workdir)
    t = config.training
    local_batch = parallel.check_batch_size(int(t.batch_size))
    mesh = parallel.make_mesh()
    model = mutils.create_model(config)
    scaler = datasets.get_data_scaler(config)
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    train_sharding, eval_sharding = parallel.batch_sharding(mesh, 1), parallel.batch_sharding(mesh)
    rng = jax.random.PRNGKey(config.seed)
    eval_rng, sample_rng = jax.random.fold_in(rng, 1), jax.random.fold_in(rng, 2)

    def start(step: int, restored: bool) -> loop.Task:
        train_it, eval_it = _data_iterators(config, step, local_batch)
        train_step, eval_step = get_train_fns(config, model, mesh)

        def device_call(state):
            x = np.asarray(next(train_it)["image"], np.float32)
            _check_images(x, config)
            state, metrics = train_step(state, parallel.global_batch(scaler(x), train_sharding))
            return state, metrics._asdict()

        def evaluate(state, step):
            x = np.asarray(next(eval_it)["image"], np.float32)
            _check_images(x, config)
            batch = parallel.global_batch(scaler(x), eval_sharding)
            return {"eval_loss": eval_step(state, batch, jax.random.fold_in(eval_rng, step))}

        snapshot = (_snapshot_writer(config, model, inverse_scaler, workdir, sample_rng)
                    if t.snapshot_sampling else None)
        return loop.Task(device_call, evaluate, snapshot)

    schedule = loop.Schedule(int(t.n_iters), int(t.log_freq), int(t.eval_freq),
                             int(t.snapshot_freq), int(t.snapshot_freq_for_preemption),
                             int(t.n_jitted_steps))
    return loop.run(workdir, create_train_state(config, mesh), schedule, start,
                    skip_nonfinite=bool(t.get("skip_nonfinite", False)),
                    batch_size=int(t.batch_size))


def _snapshot_writer(config, model, inverse_scaler, workdir: str, rng):
    """`(state, step) -> None`: training.batch_size samples of the EMA weights to W/samples."""
    from score_jax import sampling

    sde, eps = sde_lib.get_sde(config)
    shape = (config.training.batch_size, config.data.image_size, config.data.image_size,
             config.data.num_channels)
    sampling_fn = sampling.get_sampling_fn(config, sde, model, shape, inverse_scaler, eps)

    def snapshot(state, step):
        samples, _ = sampling_fn(jax.random.fold_in(rng, step), {"params": state.ema_params})
        samples = parallel.to_host(samples)
        if jax.process_index() == 0:
            _write_snapshot_samples(samples, workdir, step)

    return snapshot
