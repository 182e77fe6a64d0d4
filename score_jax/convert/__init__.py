"""Official score_sde checkpoints -> our Flax variables, and `python main.py --mode convert`.

Reads PyTorch `.pth` files (`torch.load(weights_only=True)`; torch is the `convert` extra) and
flax 0.3 msgpack `checkpoint_N` files; diffusers folders and `hf://` models are in `hub.py`.
A family plug-in `torch_to_flax(state, config) -> (mapping, dropped)` (`_TORCH_TO_FLAX`) gets the
torch state dict ('module.' stripped, numpy, buffers included) and returns {Flax path, collection
first, e.g. ('params', 'begin_conv', 'kernel'): array in Flax layout} plus the torch keys it
deliberately leaves out (e.g. `sigmas`, checked against the config)."""
from __future__ import annotations

import functools
import importlib
import json
import pathlib
import pickle
import re
import zipfile

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from flax import serialization, traverse_util

from score_jax import checkpoints
from score_jax.models import layers
from score_jax.models import utils as mutils

# model.name -> "module:function" with the `torch_to_flax` signature above.
_TORCH_TO_FLAX = {
    "ncsnpp": "score_jax.convert:all_modules_to_flax",
    "ddpm": "score_jax.convert:all_modules_to_flax",
    "ncsnv2_64": "score_jax.convert.ncsnv2:torch_to_flax",
    "ncsnv2_128": "score_jax.convert.ncsnv2:torch_to_flax",
    "ncsnv2_256": "score_jax.convert.ncsnv2:torch_to_flax",
    "ncsn": "score_jax.convert.ncsnv2:torch_to_flax",
}


# Torch buffers of the official networks (in the state dict, not in the EMA list).
_BUFFERS = {"sigmas"}


def _frozen_torch_keys(config) -> set[str]:
    """Torch parameters with requires_grad=False (absent from the EMA list): Fourier `W`."""
    if config.model.name == "ncsnpp" and str(config.model.embedding_type).lower() == "fourier":
        return {"all_modules.0.W"}
    return set()


def _variable_template(config) -> dict:
    """Shapes/dtypes of every Flax variable of the config's network (no computation)."""
    return _network_layout(config.to_json_best_effort())[0]


def _top_level_call_order(config) -> list[str]:
    """Names of the network's direct submodules in first-call order (torch `all_modules` order)."""
    return list(_network_layout(config.to_json_best_effort())[1])


@functools.lru_cache(maxsize=8)
def _network_layout(config_json: str):
    """(variable template, top-level call order) of the network of a config (as JSON)."""
    config = ml_collections.ConfigDict(json.loads(config_json))
    order = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and len(context.module.scope.path) == 1:
            if context.module.name not in order:
                order.append(context.module.name)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        template = jax.eval_shape(lambda: mutils.init_model(jax.random.PRNGKey(0), config))
    return template, tuple(order)


def _torch_leaf_to_flax(module_path: tuple[str, ...], leaf: str, array: np.ndarray):
    """(Flax leaf name, array in Flax layout) of one torch parameter of an `all_modules` entry."""
    if leaf == "weight":
        if array.ndim == 4:  # OIHW -> HWIO
            name = "weight" if module_path[-1].startswith("Conv2d") else "kernel"
            return name, array.transpose(2, 3, 1, 0)
        if array.ndim == 2:  # Linear (out, in) -> Dense (in, out)
            return "kernel", array.T
        return "scale", array  # GroupNorm
    return leaf, array  # bias; NIN `W` (in, out) and `b`; Fourier `W`


def all_modules_to_flax(state: dict, config):
    """`torch_to_flax` of NCSN++ / DDPM++ / DDPM: the i-th parameterised `all_modules` entry is
    our i-th parameterised top-level submodule in call order; inner names match (except
    `Combine.Conv` -> `Conv_0`)."""
    variables = _variable_template(config)
    template = variables["params"]
    flax_modules = [n for n in _top_level_call_order(config) if n in template]
    groups: dict[int, list[str]] = {}
    for key in state:
        match = re.fullmatch(r"all_modules\.(\d+)\.(.+)", key)
        if match:
            groups.setdefault(int(match.group(1)), []).append(key)
        elif key != "sigmas":
            raise ValueError(f"checkpoint tensor {key} {state[key].shape} is not part of an "
                             f"official {config.model.name} network (expected all_modules.*)")
    torch_modules = sorted(groups)
    if len(torch_modules) != len(flax_modules):
        raise ValueError(
            f"the checkpoint has {len(torch_modules)} parameterised entries in all_modules, the "
            f"{config.model.name} network of this config has {len(flax_modules)}: the checkpoint "
            "comes from another architecture or other model.* settings")
    mapping, dropped = {}, {"sigmas"} & set(state)
    for index, flax_name in zip(torch_modules, flax_modules):
        for key in groups[index]:
            parts = key.split(".")[2:]
            sub = tuple("Conv_0" if p == "Conv" else p for p in parts[:-1])
            if _unused_time_projection(template[flax_name], sub, state[key], config, key):
                dropped.add(key)
                continue
            leaf, array = _torch_leaf_to_flax((flax_name,) + sub, parts[-1], state[key])
            path = ("params", flax_name) + sub + (leaf,)
            _check_fits(variables, path, array,
                        f"checkpoint tensor {key} (shape {state[key].shape})", "this config")
            mapping[path] = array
    return mapping, dropped


def _unused_time_projection(block: dict, sub: tuple, array: np.ndarray, config, key: str) -> bool:
    """Whether torch `key` is the time projection `Dense_0` of a `model.conditional=False` block
    (owned but never called); raises ValueError on a wrong shape."""
    if config.model.get("conditional", True) or sub != ("Dense_0",) or "Dense_0" in block:
        return False
    channels = block["Conv_0"]["kernel"].shape[-1] if "Conv_0" in block else None
    want = (channels, 4 * config.model.nf) if array.ndim == 2 else (channels,)
    if channels is None or array.shape != want:
        raise ValueError(f"checkpoint tensor {key} {array.shape}: the unused time-embedding "
                         f"projection of an unconditional network must have shape {want}")
    return True


def _lookup(tree, path):
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def _check_fits(template: dict, path: tuple, array: np.ndarray, tensor: str, network: str):
    """ValueError naming `tensor`, `path` and both shapes unless `template`'s leaf there fits."""
    expected = _lookup(template, path)
    if expected is None or tuple(expected.shape) != array.shape:
        raise ValueError(f"{tensor}, as Flax {'/'.join(path)} {array.shape}, does not fit the "
                         f"network of {network} (expects "
                         f"{None if expected is None else tuple(expected.shape)})")


def _torch_to_flax_fn(config):
    name = config.model.name
    if name not in _TORCH_TO_FLAX:
        raise ValueError(f"model.name={name!r} has no checkpoint converter; valid: "
                         f"{sorted(_TORCH_TO_FLAX)}")
    module, fn = _TORCH_TO_FLAX[name].split(":")
    return getattr(importlib.import_module(module), fn)


def _check_sigmas(state: dict, config, path) -> None:
    if "sigmas" not in state:
        return
    ours = layers.get_sigmas(config)
    theirs = np.asarray(state["sigmas"], np.float64)
    if theirs.shape != ours.shape or not np.allclose(theirs, ours, rtol=1e-6, atol=0):
        raise ValueError(
            f"{path}: buffer 'sigmas' (shape {theirs.shape}, {theirs[0]:.6g} .. {theirs[-1]:.6g}) "
            f"differs from the table of model.sigma_min/sigma_max/num_scales = "
            f"{config.model.sigma_min}/{config.model.sigma_max}/{config.model.num_scales} "
            f"(shape {ours.shape}, {ours[0]:.6g} .. {ours[-1]:.6g})")


def _fill(mapping: dict, template: dict, path) -> dict:
    """Validates `mapping` (Flax path -> array) against the template; returns the nested dict."""
    expected = traverse_util.flatten_dict(template)
    for key, array in mapping.items():
        if key not in expected:
            raise ValueError(f"{path}: converted variable {'/'.join(key)} {np.shape(array)} does "
                             "not exist in the network of this config")
        if tuple(expected[key].shape) != np.shape(array):
            raise ValueError(f"{path}: variable {'/'.join(key)} has shape {np.shape(array)} in the "
                             f"checkpoint, the network of this config expects "
                             f"{tuple(expected[key].shape)}")
    missing = [k for k in expected if k not in mapping]
    if missing:
        raise ValueError(f"{path}: the checkpoint has no value for {len(missing)} variable(s) of "
                         f"the network of this config, e.g. {'/'.join(missing[0])} "
                         f"{tuple(expected[missing[0]].shape)}")
    return traverse_util.unflatten_dict(
        {k: np.asarray(v, dtype=expected[k].dtype) for k, v in mapping.items()})


def _torch_load(path):
    import torch  # the `convert` extra

    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray.scalar, np.dtype, type(np.dtype(np.float64))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused: the file pickles code or objects other than tensors "
                         f"and numpy scalars, which a checkpoint must not ({e})") from None
    except Exception as e:  # truncated / not a torch file: torch raises RuntimeError, EOFError...
        raise ValueError(f"{path}: not a readable PyTorch checkpoint "
                         f"({type(e).__name__}: {e})") from None


def _load_torch(path, config) -> dict:
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not {"model", "ema", "step"} <= set(ckpt):
        raise ValueError(f"{path}: not an official score_sde checkpoint (needs keys model, ema, "
                         f"step; has {sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt)})")
    state = {k.removeprefix("module."): v.detach().cpu().numpy()
             for k, v in ckpt["model"].items()}
    _check_sigmas(state, config, path)
    torch_to_flax = _torch_to_flax_fn(config)
    template = _variable_template(config)

    def convert(torch_state):
        mapping, dropped = torch_to_flax(torch_state, config)
        unknown = sorted(set(dropped) - set(torch_state))
        if unknown:
            raise ValueError(f"{path}: converter drops keys absent from the checkpoint: {unknown}")
        if len(mapping) != len(torch_state) - len(dropped):
            unused = len(torch_state) - len(dropped) - len(mapping)
            raise ValueError(f"{path}: {unused} checkpoint tensor(s) were not mapped onto the "
                             f"network of this config (checkpoint has {len(torch_state)} "
                             f"tensors, {len(dropped)} dropped, {len(mapping)} mapped)")
        return mapping, dropped

    mapping, dropped = convert(state)

    shadow = [np.asarray(p.detach().cpu().numpy()) for p in ckpt["ema"]["shadow_params"]]
    frozen = _frozen_torch_keys(config)
    # The EMA list holds every trainable torch parameter, the unused ones we drop included.
    trainable = [k for k in state if k not in _BUFFERS and k not in frozen]
    if len(trainable) != len(shadow):
        raise ValueError(f"{path}: ema.shadow_params has {len(shadow)} tensors, the model has "
                         f"{len(trainable)} trainable parameters")
    ema_state = dict(state)
    for key, value in zip(trainable, shadow):
        if value.shape != state[key].shape:
            raise ValueError(f"{path}: ema.shadow_params entry for {key} has shape {value.shape}, "
                             f"the parameter has {state[key].shape}")
        ema_state[key] = value
    ema_mapping, _ = convert(ema_state)

    out = _fill(mapping, template, path)  # {'params': ..., other collections}
    out["ema_params"] = _fill(ema_mapping, template, path)["params"]
    out["step"] = int(ckpt["step"])
    return out


def _load_jax(path, config) -> dict:
    try:
        raw = serialization.msgpack_restore(pathlib.Path(path).read_bytes())
    except Exception as e:
        raise ValueError(f"{path}: not a readable flax msgpack checkpoint "
                         f"({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict) or not {"optimizer", "params_ema", "step"} <= set(raw):
        raise ValueError(f"{path}: not an official score_sde JAX checkpoint (needs optimizer, "
                         f"params_ema, step; has {sorted(raw) if isinstance(raw, dict) else ''})")
    template = _variable_template(config)

    def variables(params, model_state):
        flat = {("params",) + k: v for k, v in traverse_util.flatten_dict(params).items()}
        for k, v in traverse_util.flatten_dict(model_state or {}).items():
            flat[k] = v
        expected = traverse_util.flatten_dict(template)
        for k, v in flat.items():
            # flax 0.3 GroupNorm stored scale/bias as (1, 1, 1, C).
            if k in expected and any(p.startswith("GroupNorm") for p in k) and \
                    np.shape(v) != expected[k].shape and np.size(v) == np.prod(expected[k].shape):
                flat[k] = np.reshape(v, expected[k].shape)
        return _fill(flat, template, path)

    model_state = raw.get("model_state") or {}
    out = variables(raw["optimizer"]["target"], model_state)
    out["ema_params"] = variables(raw["params_ema"], model_state)["params"]
    out["step"] = int(np.asarray(raw["step"]))
    return out


def load_official_checkpoint(path, config) -> dict:
    """`{'params', 'ema_params', 'step'}` (float32 numpy leaves, plus any other Flax collection) of
    an official `.pth` or msgpack `checkpoint_N` file for `config`'s network. All or nothing: raises
    ValueError naming the file and key/shape if unreadable, pickled code, or any mismatch."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint file not found")
    if path.suffix in (".pth", ".pt") or zipfile.is_zipfile(path):
        return _load_torch(path, config)
    return _load_jax(path, config)


def convert(config, workdir, checkpoint=None):
    """`--mode convert`: official `--checkpoint` file, diffusers folder or `hf://` model ->
    orbax checkpoint in `workdir/checkpoints` (diffusers: `hub.convert_diffusers`)."""
    if not checkpoint:
        raise ValueError("--mode convert needs --checkpoint=FILE (an official .pth or "
                         "checkpoint_N), a diffusers folder or hf://OWNER/NAME[@REVISION]")
    if hub.is_diffusers_source(checkpoint):
        return hub.convert_diffusers(config, workdir, checkpoint)
    return checkpoints.save_converted(workdir, load_official_checkpoint(checkpoint, config))


from score_jax.convert import hub  # noqa: E402  (hub uses the helpers above)
from score_jax.convert.hub import load_diffusers_checkpoint, load_diffusers_config  # noqa: E402,F401
