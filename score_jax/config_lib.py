"""Configs: loading a config file, validating every key the library reads, and the workdir's record.

`load_config(path, overrides)` is what `main.py --config path --config.a.b=v` does, for Python
callers (tests, benchmarks, the notebook). `validate(config)` checks every key in one place and
raises ValueError naming the key, its value and the valid range; `main.run` calls it before any
folder is created. `check_workdir_config(config, workdir, record)` compares the keys that define the
network and the SDE with `W/config.json`, written at a training run's first start.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re

import ml_collections

from score_jax import utils

CONFIG_RECORD = "config.json"


def load_config(path, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """The config of the file `path` (its `get_config()`, else `get_default_configs()`), with
    `overrides` ({'training.n_iters': 10, ...}) applied as `--config.training.n_iters=10` would.
    An unknown key raises ValueError naming it and the keys that exist there."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    name = "_config_" + re.sub(r"\W", "_", os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get = getattr(module, "get_config", None) or getattr(module, "get_default_configs", None)
    if get is None:
        raise ValueError(f"config file {path!r} defines neither get_config() nor "
                         "get_default_configs()")
    config = get()
    for key, value in (overrides or {}).items():
        check_key(config, key)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def check_key(config, key: str) -> None:
    """Raises ValueError unless the dotted `key` names a field of `config`."""
    node, seen = config, []
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(seen) or "the config"
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise ValueError(f"unknown config key {key!r}: {where} has no field {part!r}"
                             + (f"; its fields: {', '.join(known)}" if known else ""))
        node = node[part]
        seen.append(part)


def _int(lo, hi=None):
    def check(v):
        return (isinstance(v, int) and not isinstance(v, bool) and v >= lo
                and (hi is None or v <= hi))
    return check, f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")


def _real(lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return check, f"a finite number in {left}{lo:g}, {hi:g}{right}"


def _bool():
    return (lambda v: isinstance(v, bool)), "True or False"


def _one_of(*values):
    return (lambda v: v in values), f"one of {list(values)}"


# Every key the library reads that is not an architecture detail of one network family (those are
# checked by the network itself). Absent keys are not checked: the reader has a default or raises.
_RULES = {
    "seed": _int(0),
    "allow_config_change": _bool(),
    "training.batch_size": _int(1),
    "training.n_iters": _int(1),
    "training.n_jitted_steps": _int(1),
    "training.log_freq": _int(1),
    "training.eval_freq": _int(0),
    "training.snapshot_freq": _int(0),
    "training.snapshot_freq_for_preemption": _int(0),
    "training.snapshot_sampling": _bool(),
    "training.continuous": _bool(),
    "training.reduce_mean": _bool(),
    "training.likelihood_weighting": _bool(),
    "training.importance_weighting": _bool(),
    "training.final_eval": _bool(),
    "training.skip_nonfinite": _bool(),
    "sampling.snr": _real(0),
    "sampling.n_steps_each": _int(1),
    "sampling.noise_removal": _bool(),
    "sampling.probability_flow": _bool(),
    "eval.batch_size": _int(1),
    "eval.num_samples": _int(1),
    "eval.bpd_num_repeats": _int(1),
    "eval.enable_loss": _bool(),
    "eval.enable_bpd": _bool(),
    "eval.enable_sampling": _bool(),
    "eval.bpd_dataset": _one_of("test", "eval", "train"),
    "eval.dequantizer": _one_of("uniform", "variational"),
    "eval.bound_num_t": _int(0),
    "deq.nf": _int(1),
    "deq.num_layers": _int(0),
    "deq.n_iters": _int(1),
    "deq.batch_size": _int(1),
    "deq.log_freq": _int(1),
    "deq.snapshot_freq": _int(0),
    "deq.lr": _real(0, lo_open=True),
    "deq.ema_rate": _real(0, 1, hi_open=True),
    "data.image_size": _int(1),
    "data.num_channels": _int(1),
    "data.centered": _bool(),
    "data.random_flip": _bool(),
    "data.uniform_dequantization": _bool(),
    "model.ema_rate": _real(0, 1),
    "model.num_scales": _int(1),
    "model.sigma_min": _real(0, lo_open=True),
    "model.sigma_max": _real(0, lo_open=True),
    "model.beta_min": _real(0),
    "model.beta_max": _real(0, lo_open=True),
    "model.dropout": _real(0, 1, hi_open=True),
    "model.nf": _int(1),
    "model.num_res_blocks": _int(1),
    "optim.optimizer": _one_of("Adam"),
    "optim.lr": _real(0, lo_open=True),
    "optim.beta1": _real(0, 1, hi_open=True),
    "optim.eps": _real(0, lo_open=True),
    "optim.weight_decay": _real(0),
    "optim.warmup": _int(0),
    "optim.grad_clip": _real(),
}


def _get(config, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def validate(config) -> None:
    """Raises ValueError naming the first key whose value is outside its valid range (and the
    range), or whose value contradicts another key."""
    for key, (check, valid) in _RULES.items():
        value = _get(config, key)
        if value is not _MISSING and not check(value):
            raise ValueError(f"{key}={value!r} is invalid: expected {valid}")
    sigma_min, sigma_max = _get(config, "model.sigma_min"), _get(config, "model.sigma_max")
    if _MISSING not in (sigma_min, sigma_max) and not sigma_min < sigma_max:
        raise ValueError(f"model.sigma_min={sigma_min!r} must be below "
                         f"model.sigma_max={sigma_max!r}")
    if _get(config, "training.importance_weighting") is True:
        if _get(config, "training.likelihood_weighting") is not True:
            raise ValueError("training.importance_weighting=True samples t for the likelihood-"
                             "weighted loss: it needs training.likelihood_weighting=True")
        if _get(config, "training.continuous") is False:
            raise ValueError("training.importance_weighting=True needs continuous-time training "
                             "(training.continuous=True)")
    dataset = _get(config, "data.dataset")
    if dataset is not _MISSING:
        from score_jax import datasets

        if dataset not in datasets.DATASETS:
            raise ValueError(f"data.dataset={dataset!r} is invalid: expected one of "
                             f"{list(datasets.DATASETS)}")
    from score_jax import ode

    for block in ("sampling", "eval"):
        if _get(config, block) is not _MISSING:
            ode.solver_options(config[block], block)
    if _get(config, "training.sde") is not _MISSING:
        from score_jax import sde as sde_lib

        sde_lib.get_sde(config)  # names training.sde when it is unknown


def defining_keys(config) -> dict:
    """{dotted key: value} of the keys that define the network and the SDE: `model.*` (but the EMA
    rate, dropout and, for continuous-time training, the number of sampling steps `num_scales`),
    `training.sde`, `training.continuous` and the data shape and scaling."""
    flat = _flatten(config.to_dict())
    continuous = flat.get("training.continuous", True)
    skip = {"model.ema_rate", "model.dropout"} | ({"model.num_scales"} if continuous else set())
    keep = ("training.sde", "training.continuous", "data.image_size", "data.num_channels",
            "data.centered")
    return {k: v for k, v in flat.items()
            if (k.startswith("model.") and k not in skip) or k in keep}


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def check_workdir_config(config, workdir: str, record: bool) -> None:
    """Compares `defining_keys(config)` with `W/config.json`: raises ValueError naming every key
    that differs, unless `allow_config_change` (then the record is rewritten when
    `record`). Writes the record (the resolved config, as JSON) when there is none and `record`."""
    path = os.path.join(workdir, CONFIG_RECORD)
    allow = bool(config.get("allow_config_change", False))
    if os.path.exists(path):
        with open(path) as f:
            recorded = defining_keys(ml_collections.ConfigDict(json.load(f)))
        now = json.loads(json.dumps(defining_keys(config)))
        changed = sorted(set(recorded) | set(now))
        changed = [k for k in changed if recorded.get(k, "<absent>") != now.get(k, "<absent>")]
        if not changed:
            return
        if not allow:
            diffs = "; ".join(f"{k}: {recorded.get(k, '<absent>')!r} in {path}, "
                              f"{now.get(k, '<absent>')!r} now" for k in changed)
            raise ValueError(f"the config differs from the one {workdir!r} was trained with: "
                             f"{diffs}. Use the recorded values, or pass "
                             "--config.allow_config_change=True to fine-tune with "
                             "a changed model or SDE")
    if record:
        with utils.atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(config.to_dict(), f, indent=1, sort_keys=True, default=repr)
