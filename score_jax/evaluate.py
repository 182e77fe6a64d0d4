"""Modes that read a checkpoint (`sample`, `likelihood`, `eval`) and `fid_stats`.

`sample` and `likelihood` restore the newest checkpoint of `W` (a training run's, or official
weights converted with `--mode convert`; `score_jax.checkpoints.restore_for_sampling`), `eval` the
snapshots `eval.begin_ckpt..eval.end_ckpt`, and use the EMA parameters, as the official code does.
Outputs go to `W/samples/ckpt_<step>/` and `W/eval/`; every file is written atomically, so an
interrupted run never leaves a partial file behind.
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
from score_jax import inception
from score_jax import likelihood as likelihood_lib
from score_jax import losses
from score_jax import metrics
from score_jax import parallel
from score_jax import train_state
from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax import utils
from score_jax.models import utils as mutils

log = logging.getLogger(__name__)

# eval.bpd_dataset -> our split name.
_BPD_SPLITS = {"test": "eval", "eval": "eval", "train": "train"}


def _restore(config, workdir, step=None):
    """(sde, eps, model, variables, step, mesh) with the EMA weights replicated on every device;
    the newest checkpoint, or snapshot `step`."""
    sde, eps = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    mesh = parallel.make_mesh()
    ema_params, step = ckpt_lib.restore_for_sampling(workdir, step,
                                                     sharding=NamedSharding(mesh, P()))
    return sde, eps, model, {"params": ema_params}, int(step), mesh


def _write_json(path: str, payload: dict) -> None:
    if not parallel.is_main_process():
        return
    with utils.atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(payload, f, indent=1)


def _eval_batch_size(config) -> int:
    batch = int(config.eval.batch_size)
    parallel.check_batch_size(batch, what="eval.batch_size")
    return batch


def _draw_fn(config, sde, eps, model, variables, step, mesh, sampling_fn=None, workdir=None):
    """`draw(i) -> (samples (eval.batch_size, H, W, C) in [0, 1] on the host, nfe)`: batch `i` of
    `sampling_fn(rng, variables)` (default: the config's sampler) at checkpoint `step`, key
    fold_in(fold_in(key(seed), step), i). Raises FloatingPointError for NaN or inf samples."""
    if sampling_fn is None:
        batch = _eval_batch_size(config)
        shape = (batch, config.data.image_size, config.data.image_size,
                 config.data.num_channels)
        sampling_fn = sampling.get_sampling_fn(config, sde, model, shape,
                                               datasets.get_data_inverse_scaler(config), eps,
                                               sharding=NamedSharding(mesh, P("data")),
                                               workdir=workdir)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)

    def draw(i):
        samples, nfe = sampling_fn(jax.random.fold_in(rng, i), variables)
        samples = parallel.to_host(samples)
        sampling.check_finite(samples)
        return samples, int(nfe)

    return draw


def sample(config, workdir: str) -> dict:
    """Draws `eval.num_samples` samples in batches of `eval.batch_size` with the config's sampler
    (`sampling.method`: 'pc' or 'ode'); with `sampling.class_label` set, every sample is of that
    class (PC sampling guided by the classifier of `W/classifier/`, see
    `controllable_generation.get_conditional_sampling_fn`).

    Writes `W/samples/ckpt_<step>/samples_<i>.{npz,png}` (float32 in [0, 1], NHWC; a PNG grid of
    each batch). A batch containing NaN or inf raises FloatingPointError naming how many samples
    are affected, and is not written. Returns `{'step', 'num_samples', 'nfe', 'dir'}`.
    """
    sde, eps, model, variables, step, mesh = _restore(config, workdir)
    sampling_fn = None
    if config.sampling.get("class_label") is not None:
        from score_jax import controllable_generation, train_classifier

        batch = _eval_batch_size(config)
        shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
        classifier_variables, _ = train_classifier.restore_classifier(
            config, workdir, sharding=NamedSharding(mesh, P()))
        sampling_fn = controllable_generation.get_conditional_sampling_fn(
            config, sde, model, classifier_variables, shape,
            datasets.get_data_inverse_scaler(config), eps, NamedSharding(mesh, P("data")))
    draw = _draw_fn(config, sde, eps, model, variables, step, mesh, sampling_fn, workdir)
    batch = _eval_batch_size(config)
    out_dir = os.path.join(workdir, "samples", f"ckpt_{step}")
    n_batches = math.ceil(int(config.eval.num_samples) / batch)
    nfe = None
    for i in tqdm.trange(n_batches, desc=f"sampling ({config.sampling.method})", unit="batch"):
        samples, nfe = draw(i)
        if parallel.is_main_process():
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
            bpds.append(parallel.to_host(bpd))
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
    state = train_state.TrainState(step=0, params=None, ema_params=variables["params"], opt_state=None,
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


def stats_path(config) -> str:
    """`eval.fid_stats_file`, or by default `<cache>/stats/<dataset>[_<category>]_<size>_<split>.npz`
    (`score_jax.inception.cache_dir`; split `eval.fid_stats_split`)."""
    if config.eval.get("fid_stats_file"):
        return os.path.expanduser(config.eval.fid_stats_file)
    parts = [config.data.dataset.lower(), config.data.get("category"), config.data.image_size,
             config.eval.get("fid_stats_split", "train")]
    name = "_".join(str(p) for p in parts if p)
    return os.path.join(inception.cache_dir(), "stats", f"{name}.npz")


def _inception_fn(config):
    return metrics.get_inception_fn(config.eval.get("inception_weights") or None)


def fid_stats(config, workdir: str | None = None) -> dict:
    """Inception features of every image of `eval.fid_stats_split` ('train' or 'test') of the
    config's dataset; writes `{mu, sigma, pool_3}` atomically to `stats_path(config)` (on the first
    process) and returns `{'path', 'num_images'}`. `workdir` is not used."""
    del workdir
    name = str(config.eval.get("fid_stats_split", "train"))
    split = _BPD_SPLITS.get(name)
    if split is None:
        raise ValueError(f"eval.fid_stats_split={name!r}; valid: {sorted(_BPD_SPLITS)}")
    inception_fn = _inception_fn(config)
    # Every image on every process, in batches of one per device (the last device_count - 1 at
    # most are dropped).
    batches = datasets.get_dataset(config, split=split, evaluation=True,
                                   batch_size=jax.device_count(), shard_index=0, shard_count=1,
                                   uniform_dequantization=False)
    pending, features = [], []
    for batch in tqdm.tqdm(batches, desc=f"fid_stats ({name})", unit="batch"):
        pending.append(np.round(batch["image"] * 255).astype(np.uint8))
        if sum(map(len, pending)) >= 500:
            features.append(inception_fn(np.concatenate(pending))["pool_3"])
            pending = []
    if pending:
        features.append(inception_fn(np.concatenate(pending))["pool_3"])
    path = stats_path(config)
    pool = np.concatenate(features)
    if jax.process_index() == 0:
        metrics.save_stats(path, pool)
    result = {"path": path, "num_images": int(len(pool))}
    log.info("wrote the Inception statistics of %d images to %s", len(pool), path)
    print(json.dumps(result))
    return result


def _reference_stats(config) -> dict:
    """The statistics file the eval mode compares with; the default file is computed on first
    use (`fid_stats`), an explicit `eval.fid_stats_file` must exist."""
    path = stats_path(config)
    if not os.path.exists(path) and not config.eval.get("fid_stats_file"):
        fid_stats(config)
    return metrics.load_stats(path)


def _eval_num_samples(config) -> int:
    batch, num = _eval_batch_size(config), int(config.eval.num_samples)
    if num % batch:
        raise ValueError(f"eval.num_samples={num} is not a multiple of eval.batch_size={batch}")
    return num


def sample_quality(config, workdir: str, step: int, draw) -> dict:
    """FID, KID and IS of `eval.num_samples` samples against the reference statistics.

    Samples are drawn in rounds of `eval.batch_size` by `draw(i)` (see `_draw_fn`); round i writes
    `W/samples/ckpt_<step>/samples_<i>.{npz,png}` and then, atomically, its Inception features
    `W/eval/ckpt_<step>/features_<i>.npz` (`pool_3`, `logits` if the weights have them). Rounds
    whose features exist are skipped, so a killed evaluation resumes where it stopped and gives the
    result an uninterrupted one gives. Returns `{'fid', 'kid', 'kid_std', 'is', 'is_std',
    'num_samples', 'mean_nfe', 'fid_stats_file'}`; IS is None without logits.
    """
    batch, num = _eval_batch_size(config), _eval_num_samples(config)
    stats = _reference_stats(config)
    inception_fn = _inception_fn(config)
    feature_dir = os.path.join(workdir, "eval", f"ckpt_{step}")
    sample_dir = os.path.join(workdir, "samples", f"ckpt_{step}")
    paths = [os.path.join(feature_dir, f"features_{i}.npz") for i in range(num // batch)]
    for i in tqdm.trange(len(paths), desc=f"eval ckpt {step}", unit="round"):
        if os.path.exists(paths[i]):
            continue
        samples, nfe = draw(i)
        utils.save_samples(samples, os.path.join(sample_dir, f"samples_{i}"))
        features = inception_fn(metrics.samples_to_uint8(samples))
        with utils.atomic_path(paths[i]) as tmp:
            np.savez(tmp, nfe=nfe, **{k: v for k, v in features.items() if v is not None})
    rounds = [dict(np.load(p)) for p in paths]
    pool = np.concatenate([r["pool_3"] for r in rounds])
    kid, kid_std = metrics.kernel_inception_distance(
        pool, stats["pool_3"], int(config.eval.get("kid_subsets", 100)),
        int(config.eval.get("kid_subset_size", 1000)), seed=int(config.seed))
    is_mean = is_std = None
    if all("logits" in r for r in rounds):
        is_mean, is_std = metrics.inception_score(np.concatenate([r["logits"] for r in rounds]),
                                                  int(config.eval.get("is_splits", 1)))
    else:
        log.info("IS unavailable: the Inception weights have no classifier (pass pytorch-fid's "
                 ".pth as eval.inception_weights)")
    return {"fid": metrics.frechet_distance(*metrics.feature_stats(pool), stats["mu"],
                                            stats["sigma"]),
            "kid": kid, "kid_std": kid_std, "is": is_mean, "is_std": is_std,
            "num_samples": len(pool), "mean_nfe": float(np.mean([r["nfe"] for r in rounds])),
            "fid_stats_file": stats_path(config)}


def eval_steps(config, workdir: str) -> list[int]:
    """The snapshots `eval` evaluates: the steps of `W/checkpoints/` whose official checkpoint
    number, step // training.snapshot_freq, lies in [eval.begin_ckpt, eval.end_ckpt]."""
    freq = int(config.training.snapshot_freq)
    begin, end = int(config.eval.begin_ckpt), int(config.eval.end_ckpt)
    folder = os.path.join(workdir, ckpt_lib.SNAPSHOT_DIR)
    steps = sorted(int(d) for d in (os.listdir(folder) if os.path.isdir(folder) else [])
                   if d.isdigit())
    chosen = [s for s in steps if begin <= s // freq <= end]
    if not chosen:
        raise FileNotFoundError(
            f"no checkpoint in {folder} with eval.begin_ckpt={begin} <= step // "
            f"training.snapshot_freq ({freq}) <= eval.end_ckpt={end}; steps there: {steps}")
    return chosen


def evaluate(config, workdir: str, step: int | None = None) -> dict:
    """What `eval.enable_loss`, `eval.enable_bpd` and `eval.enable_sampling` (samples, FID, KID,
    IS) ask for, on snapshot `step`, or on each of `eval_steps`; writes `W/eval/ckpt_<step>.json`
    per checkpoint and returns the last one's result."""
    if config.eval.enable_sampling:
        _eval_num_samples(config)  # before anything runs
    result = None
    for s in [step] if step is not None else eval_steps(config, workdir):
        sde, eps, model, variables, s, mesh = _restore(config, workdir, s)
        result = {"step": s}
        if config.eval.enable_loss:
            result.update(_eval_loss(config, sde, model, variables, mesh))
        if config.eval.enable_bpd:
            result.update(_bpd(config, sde, model, variables, mesh))
        if config.eval.enable_sampling:
            draw = _draw_fn(config, sde, eps, model, variables, s, mesh, workdir=workdir)
            result.update(sample_quality(config, workdir, s, draw))
        _write_json(os.path.join(workdir, "eval", f"ckpt_{s}.json"), result)
        print(json.dumps(result))
    return result
