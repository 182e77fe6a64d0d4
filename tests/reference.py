"""Reference cases of the official code (`<DATA>/<case>.{json,npz,pth}`) in our conventions.

`DATA` is `$SCORE_JAX_REFERENCE_DIR`, else `tests/data/` beside this file (the official outputs the
parity tests and benchmarks compare with; see its README). A test fixture, not part of the package:
tests import it as `reference` (pytest puts tests/ on sys.path), benchmarks add tests/ first.

A case JSON holds the full official config (with the shrinking overrides applied) under `config`;
`case_config` turns it into an `ml_collections.ConfigDict` (lists become tuples, as in the config
files). `case_arrays` loads the `.npz` with every image-shaped array moved from NCHW to NHWC.
"""
from __future__ import annotations

import json
import os
import pathlib

import ml_collections
import numpy as np

DATA = pathlib.Path(os.environ.get("SCORE_JAX_REFERENCE_DIR")
                    or pathlib.Path(__file__).resolve().parent / "data")


def _tuples(value):
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def case_meta(case: str) -> dict:
    """The whole case JSON (config, n_params, parameters, state_dict_keys, ...)."""
    return json.loads((DATA / f"{case}.json").read_text())


def case_config(case: str) -> ml_collections.ConfigDict:
    """The official config of `case` as a ConfigDict (unlocked, so tests may override keys)."""
    return ml_collections.ConfigDict(_tuples(case_meta(case)["config"]))


def case_arrays(case: str) -> dict[str, np.ndarray]:
    """The case's reference arrays; rank-4 arrays (B, C, H, W) are returned as (B, H, W, C)."""
    with np.load(DATA / f"{case}.npz") as npz:
        return {k: (v.transpose(0, 2, 3, 1) if v.ndim == 4 else v) for k, v in npz.items()}


def case_checkpoint(case: str) -> pathlib.Path:
    """Path of the case's official PyTorch checkpoint."""
    return DATA / f"{case}.pth"
