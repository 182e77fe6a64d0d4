"""Modes that read a checkpoint's EMA weights (`sample`, `likelihood`, `eval`) and `fid_stats`.

Outputs go to folders keyed by `sampling.sampler_settings` (README: Outputs are keyed by what made
them), each file written atomically, so a resume only reuses work of the same settings."""
from __future__ import annotations

import json
import logging
import math
import os

import jax
import numpy as np
import tqdm

from score_jax import checkpoints as ckpt_lib
from score_jax import datasets, losses, metrics, ode, parallel, sampling, train_state, utils
from score_jax import likelihood as likelihood_lib
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

log = logging.getLogger(__name__)


def restore(config, workdir, step=None):
    """(sde, eps, model, variables, step, mesh), the EMA weights of snapshot `step` (default: the
    newest) replicated."""
    sde, eps = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    mesh = parallel.make_mesh()
    ema_params, step = ckpt_lib.restore_for_sampling(workdir, step,
                                                     sharding=parallel.replicated(mesh))
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


def draw_fn(config, sde, eps, model, variables, step, mesh, sampling_fn=None, workdir=None):
    """`draw(i) -> (samples (eval.batch_size, H, W, C) in [0, 1] on the host, nfe)` with key
    fold_in(fold_in(key(seed), step), i); FloatingPointError for NaN or inf samples."""
    if sampling_fn is None:
        batch = _eval_batch_size(config)
        shape = (batch, config.data.image_size, config.data.image_size,
                 config.data.num_channels)
        sampling_fn = sampling.get_sampling_fn(config, sde, model, shape,
                                               datasets.get_data_inverse_scaler(config), eps,
                                               sharding=parallel.batch_sharding(mesh),
                                               workdir=workdir)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)

    def draw(i):
        samples, nfe = sampling_fn(jax.random.fold_in(rng, i), variables)
        samples = parallel.to_host(samples)
        sampling.check_finite(samples)
        return samples, int(nfe)

    return draw


def sample_settings(config, variables, step: int, num_samples: int, workdir=None,
                    **extra) -> dict:
    """`sampling.sampler_settings` of the config's sampler with these weights (fingerprinted)."""
    return sampling.sampler_settings(config, step=step, weights=utils.tree_fingerprint(variables),
                                     num_samples=num_samples, workdir=workdir, **extra)


def sample(config, workdir: str) -> dict:
    """`--mode sample`: `eval.num_samples` samples (whole batches; of `sampling.class_label` if
    set) to `W/samples/ckpt_<step>/<method>_<key>/samples_<i>.{npz,png}` (float32 [0, 1], NHWC,
    `nfe`). Returns `{'step', 'num_samples', 'nfe', 'dir'}`."""
    sde, eps, model, variables, step, mesh = restore(config, workdir)
    batch = _eval_batch_size(config)
    n_batches = math.ceil(int(config.eval.num_samples) / batch)
    sampling_fn, extra = None, {}
    if config.sampling.get("class_label") is not None:
        from score_jax import controllable_generation

        shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
        classifier_variables, _ = ckpt_lib.restore_classifier(
            config, workdir, sharding=parallel.replicated(mesh))
        sampling_fn = controllable_generation.get_conditional_sampling_fn(
            config, sde, model, classifier_variables, shape,
            datasets.get_data_inverse_scaler(config), eps, parallel.batch_sharding(mesh))
        extra = {"classifier_scale": float(config.classifier.scale),
                 "classifier_weights": utils.tree_fingerprint(classifier_variables)}
    draw = draw_fn(config, sde, eps, model, variables, step, mesh, sampling_fn, workdir)
    settings = sample_settings(config, variables, step, n_batches * batch, workdir, **extra)
    out_dir = utils.settings_dir(os.path.join(workdir, "samples", f"ckpt_{step}"),
                                 str(config.sampling.method).lower(), settings,
                                 write=parallel.is_main_process())
    nfes = []
    for i in tqdm.trange(n_batches, desc=f"sampling ({config.sampling.method})", unit="batch"):
        stem = os.path.join(out_dir, f"samples_{i}")
        # A batch already there is what these settings draw: keep it (resume).
        if os.path.exists(stem + ".npz") and os.path.exists(stem + ".png"):
            with np.load(stem + ".npz") as f:
                if "nfe" in f:
                    nfes.append(int(f["nfe"]))
                    continue
        samples, nfe = draw(i)
        nfes.append(nfe)
        if parallel.is_main_process():
            utils.save_samples(samples, stem, nfe=nfe)
    result = {"step": step, "num_samples": n_batches * batch, "nfe": int(nfes[-1]),
              "dir": out_dir}
    log.info("%d samples (NFE %d per batch) in %s", result["num_samples"], nfes[-1], out_dir)
    print(json.dumps(result))
    return result


def bpd_repeats(config) -> int:
    """Passes over `eval.bpd_dataset`: `eval.bpd_num_repeats` (5) on the test split, else 1."""
    split = metrics.SPLITS.get(str(config.eval.bpd_dataset))
    if split is None:
        raise ValueError(f"eval.bpd_dataset={config.eval.bpd_dataset!r}; valid: "
                         f"{sorted(metrics.SPLITS)}")
    return int(config.eval.get("bpd_num_repeats", 5)) if split == "eval" else 1


def bpd_fns(config, sde, model, workdir: str | None = None, step: int | None = None) -> dict:
    """What a bits/dim pass calls: 'likelihood' (`likelihood.get_likelihood_fn`, solver of
    `eval.ode_*`), 'elbo' (the variational bound with `eval.bound_num_t` t per example, None
    when that is 0) and 'dequantize' (`(rng, bins) -> (u, log q(u|x))` of `W/dequantizer/` for
    `eval.dequantizer='variational'`, else None: uniform dequantization)."""
    from score_jax import dequantizer as deq_lib

    inverse_scaler = datasets.get_data_inverse_scaler(config)
    num_t = int(config.eval.get("bound_num_t", 0))
    solver = ode.solver_options(config.eval, "eval")
    fns = {"likelihood": likelihood_lib.get_likelihood_fn(sde, model, inverse_scaler, eps=1e-5,
                                                          **solver),
           "elbo": (likelihood_lib.get_elbo_fn(sde, model, inverse_scaler, eps=1e-5, num_t=num_t)
                    if num_t > 0 else None),
           "dequantize": None}
    if deq_lib.check_dequantizer_name(config) == "variational":
        deq_params = deq_lib.restore_dequantizer(config, workdir, step)
        fns["dequantize"] = jax.jit(
            lambda rng, bins: deq_lib.dequantize(config, deq_params, rng, bins))
    return fns


def bpd_pass(config, sde, model, variables, mesh, repeat: int, fns: dict
             ) -> tuple[np.ndarray, list[int], np.ndarray | None]:
    """Pass `repeat`: (bits/dim per example, NFE per batch, bound per example or None), each with
    its own dequantization noise and probes; a variational log q(u|x) is added to both."""
    from score_jax import dequantizer as deq_lib

    split = metrics.SPLITS[str(config.eval.bpd_dataset)]
    scaler = datasets.get_data_scaler(config)
    dims = config.data.image_size ** 2 * config.data.num_channels
    data_sharding = parallel.batch_sharding(mesh)
    rng = jax.random.PRNGKey(config.seed)
    # A new seed per repeat draws new dequantization noise (and a new order; one pass each).
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.seed = int(config.seed) + repeat
    batches = datasets.get_dataset(cfg, split=split, evaluation=True,
                                   batch_size=_eval_batch_size(config) // jax.process_count(),
                                   uniform_dequantization=fns["dequantize"] is None)
    bpds, bounds, nfes = [], [], []
    for i, batch in enumerate(tqdm.tqdm(batches, desc=f"bpd (repeat {repeat})", unit="batch")):
        # One key per (repeat, batch) for any split of fewer than 1,000,003 batches.
        key = jax.random.fold_in(rng, repeat * 1_000_003 + i)
        image, log_q_bpd = batch["image"], 0.0
        if fns["dequantize"] is not None:
            image, log_q = fns["dequantize"](jax.random.fold_in(key, 1),
                                             deq_lib.discrete_centers(image))
            image = np.asarray(image)
            log_q_bpd = np.asarray(log_q) / np.log(2.0) / dims
        x = jax.make_array_from_process_local_data(data_sharding, scaler(image))
        bpd, _, nfe = fns["likelihood"](key, variables, x)
        bpds.append(parallel.to_host(bpd) + log_q_bpd)
        nfes.append(int(nfe))
        if fns["elbo"] is not None:
            bound, _ = fns["elbo"](jax.random.fold_in(key, 2), variables, x)
            bounds.append(parallel.to_host(bound) + log_q_bpd)
    if not bpds:
        raise ValueError(f"eval.bpd_dataset={config.eval.bpd_dataset!r} gave no full batch of "
                         f"eval.batch_size={config.eval.batch_size}")
    bpds = np.concatenate(bpds)
    if not np.isfinite(bpds).all():
        raise FloatingPointError(f"{int((~np.isfinite(bpds)).sum())} of {len(bpds)} bits/dim "
                                 "values are NaN or inf")
    return bpds, nfes, (np.concatenate(bounds) if bounds else None)


def bits_per_dim(config, sde, model, variables, mesh, workdir: str | None = None,
                 step: int | None = None) -> dict:
    """Bits/dim over `eval.bpd_dataset` (`bpd_repeats` passes): {'bpd', 'bpd_stderr',
    'bpd_examples', 'bpd_mean_nfe', 'bpd_dequantizer'}, and 'bpd_bound*' if `eval.bound_num_t`."""
    fns = bpd_fns(config, sde, model, workdir, step)
    passes = [bpd_pass(config, sde, model, variables, mesh, r, fns)
              for r in range(bpd_repeats(config))]
    bpds = np.concatenate([b for b, _, _ in passes])
    nfes = [n for _, ns, _ in passes for n in ns]
    result = {"bpd": float(bpds.mean()), "bpd_stderr": float(bpds.std() / np.sqrt(len(bpds))),
              "bpd_examples": int(len(bpds)), "bpd_mean_nfe": float(np.mean(nfes)),
              "bpd_dequantizer": "uniform" if fns["dequantize"] is None else "variational"}
    if fns["elbo"] is not None:
        bounds = np.concatenate([c for _, _, c in passes])
        result.update(bpd_bound=float(bounds.mean()),
                      bpd_bound_stderr=float(bounds.std() / np.sqrt(len(bounds))),
                      bpd_bound_num_t=int(config.eval.bound_num_t))
    return result


def _eval_loss(config, sde, model, variables, mesh) -> dict:
    """Mean EMA-model loss over the eval split."""
    t = config.training
    eval_fn = losses.get_step_fn(sde, model, train=False, reduce_mean=t.reduce_mean,
                                 continuous=t.continuous,
                                 likelihood_weighting=t.likelihood_weighting,
                                 importance_weighting=bool(t.get("importance_weighting", False)))
    state = train_state.TrainState(step=0, params=None, ema_params=variables["params"],
                                   opt_state=None, rng=None)
    eval_step = jax.jit(lambda x, rng: eval_fn(state, x, rng))
    scaler = datasets.get_data_scaler(config)
    data_sharding = parallel.batch_sharding(mesh)
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
    """`--mode likelihood`: `bits_per_dim` of the newest checkpoint to W/eval/bpd_ckpt_<N>.json."""
    from score_jax import dequantizer as deq_lib

    deq_lib.check_dequantizer_name(config)  # before the checkpoint is read
    sde, _, model, variables, step, mesh = restore(config, workdir)
    result = {"step": step, **bits_per_dim(config, sde, model, variables, mesh, workdir, step)}
    _write_json(os.path.join(workdir, "eval", f"bpd_ckpt_{step}.json"), result)
    print(json.dumps(result))
    return result


def fid_stats(config, workdir: str | None = None) -> dict:
    """`--mode fid_stats`: `metrics.dataset_stats` (`workdir` is not used)."""
    del workdir
    result = metrics.dataset_stats(config)
    log.info("wrote the Inception statistics of %d images to %s", result["num_images"],
             result["path"])
    print(json.dumps(result))
    return result


def check_num_samples(config) -> int:
    """`eval.num_samples`; ValueError unless a whole number of `eval.batch_size` batches."""
    batch, num = _eval_batch_size(config), int(config.eval.num_samples)
    if num % batch:
        raise ValueError(f"eval.num_samples={num} is not a multiple of eval.batch_size={batch}")
    return num


def sample_quality(config, step: int, draw, feature_dir: str, sample_dir: str | None = None,
                   progress=None) -> dict:
    """FID, KID and IS of `eval.num_samples` samples of `draw(i)` (`draw_fn`): {'fid', 'kid',
    'kid_std', 'is', 'is_std', 'num_samples', 'mean_nfe', 'fid_stats_file'}, IS None without
    logits. Round i writes `sample_dir/samples_<i>` and `feature_dir/features_<i>.npz`
    (`pool_3`, `logits`, `nfe`); `feature_dir` must be keyed by the settings of `draw`."""
    batch, num = _eval_batch_size(config), check_num_samples(config)
    stats = metrics.reference_stats(config)
    inception_fn = None
    paths = [os.path.join(feature_dir, f"features_{i}.npz") for i in range(num // batch)]
    # Rounds with features are done: a killed evaluation resumes and ends as an uninterrupted one.
    missing = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    bar = progress if progress is not None else tqdm.tqdm(
        total=len(paths), initial=len(paths) - len(missing), desc=f"eval ckpt {step}",
        unit="round")
    for i in missing:
        samples, nfe = draw(i)
        if sample_dir is not None and parallel.is_main_process():
            utils.save_samples(samples, os.path.join(sample_dir, f"samples_{i}"), nfe=nfe)
        inception_fn = inception_fn or metrics.inception_fn(config)
        features = inception_fn(metrics.samples_to_uint8(samples))
        if parallel.is_main_process():
            with utils.atomic_path(paths[i]) as tmp:
                np.savez(tmp, nfe=nfe, **{k: v for k, v in features.items() if v is not None})
        bar.update(1)
    if progress is None:
        bar.close()
    rounds = [dict(np.load(p)) for p in paths]
    pool = np.concatenate([r["pool_3"] for r in rounds])
    is_mean = is_std = None
    if all("logits" in r for r in rounds):
        is_mean, is_std = metrics.inception_score(np.concatenate([r["logits"] for r in rounds]),
                                                  int(config.eval.get("is_splits", 1)))
    else:
        log.info("IS unavailable: the Inception weights have no classifier (pass pytorch-fid's "
                 ".pth as eval.inception_weights)")
    return {**metrics.fid_kid(pool, stats, config), "is": is_mean, "is_std": is_std,
            "num_samples": len(pool), "mean_nfe": float(np.mean([r["nfe"] for r in rounds])),
            "fid_stats_file": metrics.stats_path(config)}


# The eval.* keys that change an evaluation's numbers (with the sampler's settings).
_EVAL_KEYS = ("enable_loss", "enable_bpd", "enable_sampling", "bpd_dataset", "bpd_num_repeats",
              "fid_stats_file", "fid_stats_split", "inception_weights", "kid_subsets",
              "kid_subset_size", "is_splits", "dequantizer", "bound_num_t")


def eval_settings(config, variables, step: int, workdir=None) -> dict:
    """`sample_settings` of the eval's samples plus the `eval.*` values its numbers depend on."""
    return {**sample_settings(config, variables, step, int(config.eval.num_samples), workdir),
            "eval": {k: config.eval.get(k) for k in _EVAL_KEYS}}


def eval_steps(config, workdir: str) -> list[int]:
    """The steps of `W/checkpoints/` with eval.begin_ckpt <= step // snapshot_freq <= end_ckpt."""
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
    """`--mode eval`: loss, bits/dim and sample quality as `eval.enable_*` ask, on snapshot `step`
    or each of `eval_steps`, to `W/eval/ckpt_<step>/<method>_<key>/eval.json` (and a copy in
    `W/eval/ckpt_<step>.json`). Returns the last checkpoint's result."""
    if config.eval.enable_sampling:
        check_num_samples(config)  # before anything runs
    result = None
    method = str(config.sampling.method).lower()
    for s in [step] if step is not None else eval_steps(config, workdir):
        sde, eps, model, variables, s, mesh = restore(config, workdir, s)
        main = parallel.is_main_process()
        out_dir = utils.settings_dir(os.path.join(workdir, "eval", f"ckpt_{s}"), method,
                                     eval_settings(config, variables, s, workdir), write=main)
        result = {"step": s}
        if config.eval.enable_loss:
            result.update(_eval_loss(config, sde, model, variables, mesh))
        if config.eval.enable_bpd:
            result.update(bits_per_dim(config, sde, model, variables, mesh, workdir, s))
        if config.eval.enable_sampling:
            draw = draw_fn(config, sde, eps, model, variables, s, mesh, workdir=workdir)
            sample_dir = utils.settings_dir(
                os.path.join(workdir, "samples", f"ckpt_{s}"), method,
                sample_settings(config, variables, s, int(config.eval.num_samples), workdir),
                write=main)
            result.update(sample_quality(config, s, draw, out_dir, sample_dir))
        result["dir"] = out_dir
        _write_json(os.path.join(out_dir, "eval.json"), result)
        _write_json(os.path.join(workdir, "eval", f"ckpt_{s}.json"), result)
        print(json.dumps(result))
    return result
