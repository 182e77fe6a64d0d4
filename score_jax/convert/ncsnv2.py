"""The official PyTorch NCSN v1 / NCSNv2 state dicts -> our Flax `RefineNet` variables."""
from __future__ import annotations

import numpy as np

from score_jax.models import get_model
from score_jax.models.ncsnv2 import RefineNet


def _layers(cls):
    """(PyTorch module path, Flax module path, kind) of every parametrised layer of network class
    `cls`; kind is 'conv', 'conv_nobias', 'norm' or 'cnorm' (conditional norm)."""
    nkind = "cnorm" if cls.conditional else "norm"
    norm = "ConditionalInstanceNorm2dPlus" if cls.conditional else "InstanceNorm2dPlus"
    yield "begin_conv", ("Conv_0",), "conv"
    r, width_in = 0, 1
    for tname, blocks in cls.stages:
        for b, (width, resample, dilation) in enumerate(blocks):
            t, f = f"{tname}.{b}", (f"ResidualBlock_{r}",)
            if resample == "down" and dilation == 1:
                convs = [("conv1", ("Conv_0",)), ("conv2.conv", ("ConvMeanPool_0", "Conv_0")),
                         ("shortcut.conv", ("ConvMeanPool_1", "Conv_0"))]
            else:  # Flax numbers convs in call order; a widening shortcut is called first
                order = (["conv1", "conv2", "shortcut"] if resample == "down" else
                         ["shortcut"] * (width != width_in) + ["conv1", "conv2"])
                convs = [(c, (f"Conv_{i}",)) for i, c in enumerate(order)]
            for tsub, fsub in convs:
                yield f"{t}.{tsub}", f + fsub, "conv"
            yield f"{t}.normalize1", f + (f"{norm}_0",), nkind
            yield f"{t}.normalize2", f + (f"{norm}_1",), nkind
            r, width_in = r + 1, width
    for k, (tname, _) in enumerate(cls.refines):
        f, n_in = (f"RefineBlock_{k}",), 1 if k == 0 else 2
        rcus = [(f"adapt_convs.{i}", f"RCUBlock_{i}", 2) for i in range(n_in)]
        rcus.append(("output_convs", f"RCUBlock_{n_in}", 3 if k == len(cls.refines) - 1 else 1))
        for tsub, fsub, n_blocks in rcus:
            for i in range(n_blocks * 2):
                ab = f"{i // 2 + 1}_{i % 2 + 1}"
                yield f"{tname}.{tsub}.{ab}_conv", f + (fsub, f"Conv_{i}"), "conv_nobias"
                if cls.conditional:
                    yield f"{tname}.{tsub}.{ab}_norm", f + (fsub, f"{norm}_{i}"), nkind
        fused = [("msf", "MSFBlock_0", "conv")] * (n_in > 1)
        for tsub, fsub, kind in fused + [("crp", "CRPBlock_0", "conv_nobias")]:
            for i in range(2):
                yield f"{tname}.{tsub}.convs.{i}", f + (fsub, f"Conv_{i}"), kind
                if cls.conditional:
                    yield f"{tname}.{tsub}.norms.{i}", f + (fsub, f"{norm}_{i}"), nkind
    yield "normalizer", (f"{norm}_0",), nkind
    yield "end_conv", ("Conv_1",), "conv"


def _leaves(kind: str):
    """(PyTorch tensor name, Flax variable path, layout transform) of the tensors of a kind."""
    conv_w = ("weight", ("kernel",), lambda w: np.transpose(w, (2, 3, 1, 0)))  # OIHW -> HWIO
    return {"conv": [conv_w, ("bias", ("bias",), np.asarray)],
            "conv_nobias": [conv_w],
            "norm": [(p, (p,), lambda v: np.reshape(v, (1, 1, 1, -1)))
                     for p in ("alpha", "gamma", "beta")],
            "cnorm": [("embed.weight", ("Embed_0", "embedding"), np.asarray)]}[kind]


def torch_to_flax(state: dict[str, np.ndarray], config
                  ) -> tuple[dict[tuple[str, ...], np.ndarray], set[str]]:
    """Official NCSN/NCSNv2 state dict ('module.' stripped) -> ({('params', *path): array}, dropped)

    Convolutions OIHW -> HWIO, InstanceNorm++ vectors (C,) -> (1, 1, 1, C); `sigmas` is dropped
    (checked by the loader). Raises ValueError on a missing or unexpected tensor."""
    cls = get_model(config.model.name)
    if not (isinstance(cls, type) and issubclass(cls, RefineNet)):
        raise ValueError(f"model.name={config.model.name!r} is not an NCSN-family network")
    state = dict(state)
    dropped = {"sigmas"} & set(state)  # checked against the config by the caller
    state.pop("sigmas", None)
    params, missing = {}, []
    for tpath, fpath, kind in _layers(cls):
        for tleaf, fleaf, transform in _leaves(kind):
            key = f"{tpath}.{tleaf}"
            if key in state:
                params[("params",) + fpath + fleaf] = transform(np.asarray(state.pop(key)))
            else:
                missing.append(key)
    if missing or state:
        raise ValueError(f"state dict does not match {config.model.name}: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {sorted(state)[:8]}"
                         f"{' ...' if len(state) > 8 else ''}")
    return params, dropped
