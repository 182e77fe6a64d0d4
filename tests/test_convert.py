"""Official checkpoints -> our networks: parity with the official PyTorch outputs, bad inputs,
the flax-0.3 JAX format, and `main.py --mode convert` end to end."""
import collections
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from flax import serialization, traverse_util
from test_models import compile_fast

from score_jax import checkpoints, convert
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

import reference as refcases

CASES = ["ncsnpp_ve_cont_small", "ddpmpp_vp_cont_small", "ddpmpp_subvp_cont_small",
         "ddpm_vp_small"]
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted():
    """Converted checkpoints, computed once per case."""
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = convert.load_official_checkpoint(refcases.case_checkpoint(case),
                                                           refcases.case_config(case))
        return cache[case]

    return get


def _assert_close(ours, ref, what):
    ref = np.asarray(ref, np.float64)
    err = float(np.max(np.abs(np.asarray(ours, np.float64) - ref)))
    assert err <= 1e-4 * np.max(np.abs(ref)), (f"{what}: max|err|={err:.3g}, "
                                               f"max|ref|={np.max(np.abs(ref)):.3g}")


@pytest.mark.parametrize("case", CASES)
def test_parity_with_official_outputs(case, converted):
    config = refcases.case_config(case)
    arrays = refcases.case_arrays(case)
    state = converted(case)
    assert state["step"] == 1
    model = mutils.create_model(config)
    sde, _ = sde_lib.get_sde(config)
    continuous = config.training.continuous

    def raw_and_score(params, x, labels, t):
        variables = {"params": params}
        score_fn = mutils.get_score_fn(sde, model, variables, continuous=continuous)
        return model.apply(variables, x, labels, train=False), score_fn(x, t)

    x, t, labels = jnp.asarray(arrays["x"]), jnp.asarray(arrays["t"]), jnp.asarray(arrays["labels"])
    raw_and_score = compile_fast(raw_and_score, state["params"], x, labels, t)
    if "labels_int" in arrays:  # integer labels: DDPM indices / VE noise indices
        labels_int = jnp.asarray(arrays["labels_int"].astype(np.int32))
        raw_int_fn = compile_fast(lambda p, x, l: model.apply({"params": p}, x, l, train=False),
                                  state["params"], x, labels_int)
    for weights, name in (("params", "model"), ("ema_params", "ema")):
        raw, score = raw_and_score(state[weights], x, labels, t)
        _assert_close(raw, arrays[f"{name}_raw"], f"{case} {name}_raw")
        _assert_close(score, arrays[f"{name}_score"], f"{case} {name}_score")
        if "labels_int" in arrays:
            raw_int = raw_int_fn(state[weights], x, labels_int)
            _assert_close(raw_int, arrays[f"{name}_raw_int"], f"{case} {name}_raw_int")


BFLOAT16_SCORE_RTOL = 3e-2  # max|bf16 - f32| / max|f32|; measured 5e-3 .. 1e-2 (README)


@pytest.mark.parametrize("case", ["ncsnpp_ve_cont_small", "ddpm_vp_small"])
def test_bfloat16_score_is_close_to_float32(case, converted):
    """model.dtype='bfloat16' keeps float32 parameters and a float32 score within
    BFLOAT16_SCORE_RTOL of the float32 network's, and does compute in bfloat16 (the scores
    differ)."""
    arrays = refcases.case_arrays(case)
    x, t = jnp.asarray(arrays["x"]), jnp.asarray(arrays["t"])
    params = converted(case)["params"]
    scores = {}
    for dtype in ("float32", "bfloat16"):
        config = refcases.case_config(case)
        config.model.dtype = dtype
        sde, _ = sde_lib.get_sde(config)
        model = mutils.create_model(config)

        def score(p, x, t):
            return mutils.get_score_fn(sde, model, {"params": p},
                                       continuous=config.training.continuous)(x, t)

        scores[dtype] = compile_fast(score, params, x, t)(params, x, t)
        template = jax.eval_shape(lambda: mutils.init_model(jax.random.PRNGKey(0), config))
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(template)} == {np.dtype("float32")}
    assert scores["bfloat16"].dtype == jnp.float32
    ref = np.asarray(scores["float32"], np.float64)
    err = np.abs(np.asarray(scores["bfloat16"], np.float64) - ref).max() / np.abs(ref).max()
    assert 1e-4 < err <= BFLOAT16_SCORE_RTOL, err


@pytest.mark.parametrize("case", CASES)
def test_parameter_count_and_ema(case, converted):
    state = converted(case)
    meta = refcases.case_meta(case)
    count = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(state["params"]))
    assert count == meta["n_params"]
    # EMA differs from the model (one training step) but W of the Fourier projection is shared.
    diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), state["params"],
                                   state["ema_params"])
    assert max(jax.tree_util.tree_leaves(diffs)) > 0
    if "GaussianFourierProjection_0" in state["params"]:
        np.testing.assert_array_equal(state["params"]["GaussianFourierProjection_0"]["W"],
                                      state["ema_params"]["GaussianFourierProjection_0"]["W"])


def _convert_fails(tmp_path, checkpoint, config, match):
    workdir = tmp_path / "work"
    with pytest.raises(ValueError, match=match):
        convert.convert(config, str(workdir), checkpoint=str(checkpoint))
    assert not workdir.exists(), "a failed conversion must leave no output"


def test_ve_checkpoint_with_vp_config(tmp_path):
    _convert_fails(tmp_path, refcases.case_checkpoint("ncsnpp_ve_cont_small"),
                   refcases.case_config("ddpmpp_vp_cont_small"), "all_modules|shape")


def test_checkpoint_of_another_architecture(tmp_path):
    _convert_fails(tmp_path, refcases.case_checkpoint("ddpm_vp_small"),
                   refcases.case_config("ddpmpp_vp_cont_small"), "all_modules|shape")


def test_other_block_widths_name_key_and_shapes():
    config = refcases.case_config("ddpmpp_vp_cont_small")
    config.model.ch_mult = (1, 2, 4)
    with pytest.raises(ValueError, match=r"all_modules\.\d+\.\S+ \(shape .*expects"):
        convert.load_official_checkpoint(refcases.case_checkpoint("ddpmpp_vp_cont_small"), config)


def test_sigma_table_mismatch_names_the_config_keys(tmp_path):
    config = refcases.case_config("ncsnpp_ve_cont_small")
    config.model.sigma_max = 378
    _convert_fails(tmp_path, refcases.case_checkpoint("ncsnpp_ve_cont_small"), config,
                   r"sigmas.*model\.sigma_min/sigma_max/num_scales")


def test_truncated_file(tmp_path):
    data = refcases.case_checkpoint("ddpm_vp_small").read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    _convert_fails(tmp_path, bad, refcases.case_config("ddpm_vp_small"),
                   "truncated.pth: not a readable PyTorch checkpoint")


class _Payload:
    """Any class: a checkpoint that pickles one must be refused without running anything."""


def test_pickled_code_is_refused(tmp_path):
    bad = tmp_path / "code.pth"
    torch.save({"model": collections.OrderedDict(), "ema": _Payload(), "step": 0}, bad)
    _convert_fails(tmp_path, bad, refcases.case_config("ddpm_vp_small"), "code.pth: refused")


def test_ema_list_of_another_model(tmp_path):
    ckpt = torch.load(refcases.case_checkpoint("ddpm_vp_small"), weights_only=False)
    ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][:-1]
    bad = tmp_path / "short_ema.pth"
    torch.save(ckpt, bad)
    _convert_fails(tmp_path, bad, refcases.case_config("ddpm_vp_small"),
                   "shadow_params has 185 tensors, the model has 186")


def test_unknown_model_name(tmp_path):
    config = refcases.case_config("ddpm_vp_small")
    config.model.name = "unet9000"
    _convert_fails(tmp_path, refcases.case_checkpoint("ddpm_vp_small"), config,
                   "model.name='unet9000'")


def test_missing_checkpoint_flag(tmp_path):
    with pytest.raises(ValueError, match="--checkpoint"):
        convert.convert(refcases.case_config("ddpm_vp_small"), str(tmp_path / "w"))


def _flax03_state(params, ema_params, step):
    """What flax 0.3 `serialization.to_bytes(State(...))` of the official JAX code wrote:
    GroupNorm scale/bias as (1, 1, 1, C), an Adam `flax.optim.Optimizer` as `optimizer`."""

    def old_layout(tree):
        flat = traverse_util.flatten_dict(tree)
        return traverse_util.unflatten_dict({
            k: (v.reshape(1, 1, 1, -1) if any(p.startswith("GroupNorm") for p in k) else v)
            for k, v in flat.items()})

    target = old_layout(params)
    adam = jax.tree_util.tree_map(lambda v: {"grad_ema": np.zeros_like(v),
                                             "grad_sq_ema": np.zeros_like(v)}, target)
    return {"step": step,
            "optimizer": {"target": target, "state": {"step": step, "param_states": adam}},
            "lr": 2e-4, "model_state": {}, "ema_rate": 0.9999,
            "params_ema": old_layout(ema_params), "rng": np.array([0, 42], np.uint32)}


def test_official_jax_msgpack_checkpoint(tmp_path, converted):
    case = "ddpmpp_vp_cont_small"
    ref = converted(case)
    path = tmp_path / "checkpoint_1"
    path.write_bytes(serialization.msgpack_serialize(
        _flax03_state(ref["params"], ref["ema_params"], 1)))
    state = convert.load_official_checkpoint(path, refcases.case_config(case))
    assert state["step"] == 1
    for key in ("params", "ema_params"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, state[key], ref[key])
    bad = tmp_path / "checkpoint_2"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="checkpoint_2: not a readable flax msgpack"):
        convert.load_official_checkpoint(bad, refcases.case_config(case))


def test_main_convert_end_to_end(tmp_path, converted):
    case = "ddpmpp_vp_cont_small"
    config_file = tmp_path / "case_config.py"
    config_file.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\nimport reference\n\n\n"
        f"def get_config():\n    return reference.case_config({case!r})\n")
    workdir = tmp_path / "work"
    subprocess.run([sys.executable, str(REPO / "main.py"), "--mode", "convert",
                    f"--config={config_file}", f"--workdir={workdir}",
                    f"--checkpoint={refcases.case_checkpoint(case)}"],
                   check=True, cwd=REPO, capture_output=True, timeout=300)
    with ocp.CheckpointManager(workdir / "checkpoints") as mngr:
        assert mngr.all_steps() == [1]
        restored = mngr.restore(1)
    assert int(restored["step"]) == 1
    ref = converted(case)
    for key in ("params", "ema_params"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, restored[key], ref[key])
    # What sampling restores.
    ema_params, step = checkpoints.restore_for_sampling(str(workdir))
    assert step == 1
    jax.tree_util.tree_map(np.testing.assert_array_equal, ema_params, ref["ema_params"])


@pytest.mark.parametrize("case", ["ddpmpp_vp_cont_small", "ncsnpp_ve_cont_small"])
def test_unconditional_networks_load(case, converted, tmp_path):
    """An official `model.conditional=False` checkpoint: its residual blocks still own the unused
    time-embedding projections `Dense_0` (checked, then dropped). Built from the conditional case
    file as the official code builds such a network (no time-embedding Linear layers in
    `all_modules`), it converts to the conditional case's tensors minus the time embedding."""
    ckpt = torch.load(refcases.case_checkpoint(case), map_location="cpu", weights_only=False)
    model = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    fourier = refcases.case_config(case).model.embedding_type == "fourier"
    temb = {1, 2} if fourier else {0, 1}  # the two Linear layers after the (Fourier) projection
    trainable = [k for k in model if k != "sigmas" and k != "all_modules.0.W"]
    shadow = dict(zip(trainable, ckpt["ema"]["shadow_params"]))
    renamed, new_shadow = {}, []
    for key, value in model.items():
        index = int(key.split(".")[1]) if key.startswith("all_modules.") else None
        if index in temb:
            continue
        if index is not None:
            key = f"all_modules.{index - sum(i < index for i in temb)}." + key.split(".", 2)[2]
        renamed[key] = value
    new_shadow = [shadow[k] for k in trainable if int(k.split(".")[1]) not in temb]
    path = tmp_path / "uncond.pth"
    torch.save({"model": renamed, "ema": {"shadow_params": new_shadow}, "step": 3}, path)
    config = refcases.case_config(case)
    config.model.conditional = False
    out = convert.load_official_checkpoint(path, config)
    full = converted(case)
    for key in ("params", "ema_params"):
        ours = traverse_util.flatten_dict(out[key])
        theirs = {k: v for k, v in traverse_util.flatten_dict(full[key]).items()
                  if not (k[0].startswith("Dense_") or k[-2] == "Dense_0")}
        assert set(ours) == set(theirs)
        for k in ours:
            np.testing.assert_array_equal(ours[k], theirs[k], err_msg=str(k))
    x = jnp.ones((1, 16, 16, 3)) * 0.1
    y = mutils.create_model(config).apply({"params": out["ema_params"]}, x, jnp.ones((1,)))
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    # A wrong-shaped unused projection is refused, naming the tensor.
    block = next(k for k in renamed if k.endswith("Dense_0.weight"))
    renamed[block] = renamed[block][:, :3]
    torch.save({"model": renamed, "ema": {"shadow_params": new_shadow}, "step": 3}, path)
    with pytest.raises(ValueError, match=f"{block}.*unused time-embedding projection"):
        convert.load_official_checkpoint(path, config)
