"""Modes that read a checkpoint: `sample`, `likelihood` and `eval`.

They restore the newest checkpoint of `W` (a training run's, or official weights converted with
`--mode convert`; `score_jax.checkpoints.restore_for_sampling`) and use its EMA parameters, as the
official code does. Outputs go to `W/samples/ckpt_<step>/` and `W/eval/`; every file is written
atomically, so an interrupted run never leaves a partial file behind.
"""
from __future__ import annotations

import json
import logging
import math
import os

import jax
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from score_jax import checkpoints as ckpt_lib
from score_jax import datasets
from score_jax import likelihood as likelihood_lib
from score_jax import losses
from score_jax import parallel
from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax import utils
from score_jax.models import utils as mutils

log = logging.getLogger(__name__)

# eval.bpd_dataset -> our split name.
_BPD_SPLITS = {"test": "eval", "eval": "eval", "train": "train"}


def _restore(config, workdir):
    """(sde, eps, model, variables, step, mesh) with the EMA weights replicated on every device."""
    sde, eps = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    mesh = parallel.make_mesh()
    ema_params, step = ckpt_lib.restore_for_sampling(workdir, sharding=NamedSharding(mesh, P()))
    return sde, eps, model, {"params": ema_params}, int(step), mesh


def _write_json(path: str, payload: dict) -> None:
    with utils.atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(payload, f, indent=1)


def _eval_batch_size(config) -> int:
    batch = int(config.eval.batch_size)
    parallel.check_batch_size(batch, what="eval.batch_size")
    return batch


def sample(config, workdir: str) -> dict:
    """Draws `eval.num_samples` samples in batches of `eval.batch_size` with the config's sampler
    (`sampling.method`: 'pc' or 'ode').

    Writes `W/samples/ckpt_<step>/samples_<i>.{npz,png}` (float32 in [0, 1], NHWC; a PNG grid of
    each batch). A batch containing NaN or inf raises FloatingPointError naming how many samples
    are affected, and is not written. Returns `{'step', 'num_samples', 'nfe', 'dir'}`.
    """
    sde, eps, model, variables, step, mesh = _restore(config, workdir)
    batch = _eval_batch_size(config)
    shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    sampling_fn = sampling.get_sampling_fn(config, sde, model, shape, inverse_scaler, eps,
                                           sharding=NamedSharding(mesh, P("data")))
    out_dir = os.path.join(workdir, "samples", f"ckpt_{step}")
    n_batches = math.ceil(int(config.eval.num_samples) / batch)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
    nfe = None
    for i in tqdm.trange(n_batches, desc=f"sampling ({config.sampling.method})", unit="batch"):
        samples, nfe = sampling_fn(jax.random.fold_in(rng, i), variables)
        samples = jax.device_get(samples)
        sampling.check_finite(samples)
        utils.save_samples(samples, os.path.join(out_dir, f"samples_{i}"))
    result = {"step": step, "num_samples": n_batches * batch, "nfe": int(nfe), "dir": out_dir}
    log.info("wrote %d samples (NFE %d per batch) to %s", result["num_samples"], nfe, out_dir)
    print(json.dumps(result))
    return result


def _bpd(config, sde, model, variables, mesh) -> dict:
    """Bits/dim over `eval.bpd_dataset` (uniformly dequantized, as official): the test split is
    read `eval.bpd_num_repeats` times (official: 5) with fresh dequantization noise, the train
    split once."""
    split = _BPD_SPLITS.get(str(config.eval.bpd_dataset))
    if split is None:
        raise ValueError(f"eval.bpd_dataset={config.eval.bpd_dataset!r}; valid: "
                         f"{sorted(_BPD_SPLITS)}")
    scaler = datasets.get_data_scaler(config)
    likelihood_fn = likelihood_lib.get_likelihood_fn(
        sde, model, datasets.get_data_inverse_scaler(config), eps=1e-5)
    data_sharding = NamedSharding(mesh, P("data"))
    rng = jax.random.PRNGKey(config.seed)
    bpds, nfes = [], []
    repeats = int(config.eval.get("bpd_num_repeats", 5)) if split == "eval" else 1
    for repeat in range(repeats):
        # A new seed per repeat draws new dequantization noise (and a new order; one pass each).
        cfg = config.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.seed = int(config.seed) + repeat
        batches = datasets.get_dataset(cfg, split=split, evaluation=True,
                                       batch_size=_eval_batch_size(config) // jax.process_count(),
                                       uniform_dequantization=True)
        for i, batch in enumerate(tqdm.tqdm(batches, desc=f"bpd (repeat {repeat})",
                                            unit="batch")):
            x = jax.make_array_from_process_local_data(data_sharding, scaler(batch["image"]))
            bpd, _, nfe = likelihood_fn(jax.random.fold_in(rng, repeat * 1_000_003 + i),
                                        variables, x)
            bpds.append(np.asarray(jax.device_get(bpd)))
            nfes.append(int(nfe))
    if not bpds:
        raise ValueError(f"eval.bpd_dataset={config.eval.bpd_dataset!r} gave no full batch of "
                         f"eval.batch_size={config.eval.batch_size}")
    bpds = np.concatenate(bpds)
    if not np.isfinite(bpds).all():
        raise FloatingPointError(f"{int((~np.isfinite(bpds)).sum())} of {len(bpds)} bits/dim "
                                 "values are NaN or inf")
    return {"bpd": float(bpds.mean()), "bpd_stderr": float(bpds.std() / np.sqrt(len(bpds))),
            "bpd_examples": int(len(bpds)), "bpd_mean_nfe": float(np.mean(nfes))}


def _eval_loss(config, sde, model, variables, mesh) -> dict:
    """Mean EMA-model loss over the eval split (official `eval_step`)."""
    t = config.training
    eval_fn = losses.get_step_fn(sde, model, train=False, reduce_mean=t.reduce_mean,
                                 continuous=t.continuous, likelihood_weighting=t.likelihood_weighting)
    state = losses.TrainState(step=0, params=None, ema_params=variables["params"], opt_state=None,
                              rng=None)
    eval_step = jax.jit(lambda x, rng: eval_fn(state, x, rng))
    scaler = datasets.get_data_scaler(config)
    data_sharding = NamedSharding(mesh, P("data"))
    batches = datasets.get_dataset(config, split="eval", evaluation=True,
                                   batch_size=_eval_batch_size(config) // jax.process_count())
    rng = jax.random.PRNGKey(config.seed + 1)
    values = [float(eval_step(jax.make_array_from_process_local_data(data_sharding,
                                                                       scaler(b["image"])),
                              jax.random.fold_in(rng, i)))
              for i, b in enumerate(tqdm.tqdm(batches, desc="eval loss", unit="batch"))]
    if not values:
        raise ValueError(f"the eval split gave no full batch of eval.batch_size="
                         f"{config.eval.batch_size}")
    return {"loss": float(np.mean(values)), "loss_batches": len(values)}


def likelihood(config, workdir: str) -> dict:
    """Bits/dim of the newest checkpoint on `eval.bpd_dataset`; writes
    `W/eval/bpd_ckpt_<step>.json` and returns `{'step', 'bpd', 'bpd_stderr', ...}`."""
    sde, _, model, variables, step, mesh = _restore(config, workdir)
    result = {"step": step, **_bpd(config, sde, model, variables, mesh)}
    _write_json(os.path.join(workdir, "eval", f"bpd_ckpt_{step}.json"), result)
    print(json.dumps(result))
    return result


def evaluate(config, workdir: str) -> dict:
    """What `eval.enable_loss`, `eval.enable_bpd` and `eval.enable_sampling` ask for, on the newest
    checkpoint; writes `W/eval/ckpt_<step>.json`.

    Sampling writes the samples like `--mode sample`; FID/IS need the Inception network, which is
    not bundled: compute them from the written npz files with your FID tool.
    """
    sde, _, model, variables, step, mesh = _restore(config, workdir)
    result = {"step": step}
    if config.eval.enable_loss:
        result.update(_eval_loss(config, sde, model, variables, mesh))
    if config.eval.enable_bpd:
        result.update(_bpd(config, sde, model, variables, mesh))
    if config.eval.enable_sampling:
        result["samples_dir"] = sample(config, workdir)["dir"]
    _write_json(os.path.join(workdir, "eval", f"ckpt_{step}.json"), result)
    print(json.dumps(result))
    return result
