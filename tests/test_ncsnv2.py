"""NCSNv2 / NCSN v1 networks against the official PyTorch code's outputs (`ncsnv2_ve_small`)."""
import functools
import importlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict, unflatten_dict

from score_jax import convert
from score_jax import sde as sde_lib
from score_jax.convert import ncsnv2 as ncsn_convert
from score_jax.models import get_model, ncsnv2
from score_jax.models import utils as mutils
from score_jax.models.normalization import ConditionalInstanceNorm2dPlus, InstanceNorm2dPlus

from reference import case_arrays, case_checkpoint, case_config, case_meta

CASE = "ncsnv2_ve_small"


def assert_rel(out, ref, rtol=1e-4):
    """max |out - ref| <= rtol * max |ref| (the acceptance criterion of the parity tests)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape
    err, scale = np.abs(out - ref).max(), np.abs(ref).max()
    assert err <= rtol * scale, f"max|err| {err:.3g} > {rtol} * max|ref| {scale:.3g}"


@functools.lru_cache(maxsize=None)
def official_state() -> dict[str, np.ndarray]:
    """The case checkpoint's model state dict ('module.' stripped, numpy)."""
    ckpt = torch.load(case_checkpoint(CASE), map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v.numpy() for k, v in ckpt["model"].items()}


@functools.lru_cache(maxsize=None)
def converted_checkpoint() -> dict:
    """The case checkpoint through the converter: {'params', 'ema_params', 'step'}."""
    return convert.load_official_checkpoint(case_checkpoint(CASE), case_config(CASE))


def test_mapping_covers_the_flax_tree_and_the_parameter_count():
    config = case_config(CASE)
    shapes = flatten_dict(jax.eval_shape(
        functools.partial(mutils.init_model, config=config), jax.random.PRNGKey(0)))
    params, dropped = ncsn_convert.torch_to_flax(official_state(), config)
    assert dropped == {"sigmas"}
    assert set(params) == set(shapes)
    for key, value in params.items():
        assert value.shape == shapes[key].shape, key
    n_params = sum(int(np.prod(v.shape)) for v in shapes.values())
    assert n_params == case_meta(CASE)["n_params"] == 117323


@functools.lru_cache(maxsize=None)
def jitted_case_fns():
    """jit-compiled `apply(variables, x, labels)` and `score(variables, x, t)` of the case model
    (compiled once, shared by the model and EMA weights)."""
    config = case_config(CASE)
    model = mutils.create_model(config)
    sde, _ = sde_lib.get_sde(config)
    apply = jax.jit(functools.partial(model.apply, train=False))
    score = jax.jit(lambda variables, x, t: mutils.get_score_fn(
        sde, model, variables, continuous=False)(x, t))
    return apply, score


@pytest.mark.parametrize("weights", ["model", "ema"])
def test_parity_with_official_outputs(weights):
    ref = case_arrays(CASE)
    converted = converted_checkpoint()
    variables = {"params": converted["params" if weights == "model" else "ema_params"]}
    apply, score = jitted_case_fns()
    assert_rel(apply(variables, ref["x"], ref["labels"]), ref[f"{weights}_raw"])
    assert_rel(apply(variables, ref["x"], ref["labels_int"]), ref[f"{weights}_raw_int"])
    assert_rel(score(variables, ref["x"], ref["t"]), ref[f"{weights}_score"])


def test_score_fn_labels_are_the_official_noise_indices():
    ref = case_arrays(CASE)
    labels = np.round((1.0 - ref["t"]) * (case_config(CASE).model.num_scales - 1))
    np.testing.assert_array_equal(labels, ref["labels"])


def test_sigmas_buffer_must_match_the_config():
    config = case_config(CASE)
    config.model.num_scales = 231
    with pytest.raises(ValueError, match="buffer 'sigmas'.*model.sigma_min/sigma_max/num_scales"):
        convert.load_official_checkpoint(case_checkpoint(CASE), config)


def test_every_tensor_is_mapped_or_reported():
    config = case_config(CASE)
    state = dict(official_state(), extra=np.zeros(3))
    with pytest.raises(ValueError, match="unexpected.*extra"):
        ncsn_convert.torch_to_flax(state, config)
    state = {k: v for k, v in official_state().items() if k != "end_conv.bias"}
    with pytest.raises(ValueError, match="missing.*end_conv.bias"):
        ncsn_convert.torch_to_flax(state, config)


def test_instance_norm_plus_matches_torch_formula():
    """InstanceNorm++ and its conditional form against the PyTorch computation (unbiased variance
    across channel means, biased spatial variance, eps 1e-5)."""
    x = np.random.RandomState(0).randn(3, 5, 4, 6).astype(np.float32) * 3 + 1
    y = np.array([2, 0, 2])
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    means = xt.mean(dim=(2, 3))
    means = (means - means.mean(-1, keepdim=True)) / torch.sqrt(means.var(-1, keepdim=True) + 1e-5)
    h = torch.nn.functional.instance_norm(xt, eps=1e-5)

    norm = InstanceNorm2dPlus()
    v = norm.init(jax.random.PRNGKey(1), x)
    p = {k: torch.from_numpy(np.array(a).reshape(-1)) for k, a in v["params"].items()}
    expected = p["gamma"][:, None, None] * (h + means[..., None, None] * p["alpha"][:, None, None])
    expected = expected + p["beta"][:, None, None]
    assert_rel(norm.apply(v, x), expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5)

    cnorm = ConditionalInstanceNorm2dPlus(num_classes=4)
    v = cnorm.init(jax.random.PRNGKey(2), x, y)
    table = np.asarray(v["params"]["Embed_0"]["embedding"]) + np.random.RandomState(1).randn(4, 18)
    v = {"params": {"Embed_0": {"embedding": jnp.asarray(table, jnp.float32)}}}
    gamma, alpha, beta = torch.from_numpy(table[y].astype(np.float32)).chunk(3, dim=-1)
    expected = gamma[..., None, None] * (h + means[..., None, None] * alpha[..., None, None])
    expected = expected + beta[..., None, None]
    assert_rel(cnorm.apply(v, x, y), expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5)


def test_bilinear_resize_matches_torch_align_corners():
    x = np.random.RandomState(0).randn(2, 3, 5, 4).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(7, 10),
                                          mode="bilinear", align_corners=True)
    out = ncsnv2.resize_bilinear_align_corners(jnp.asarray(x), (7, 10))
    assert_rel(out, ref.permute(0, 2, 3, 1).numpy(), rtol=1e-6)


OFFICIAL = ["ve/ncsnv2/cifar10", "ve/ncsnv2/celeba", "ve/ncsnv2/bedroom",
            "ve/ncsn/cifar10", "ve/ncsn/cifar10_5", "ve/ncsn/cifar10_124", "ve/ncsn/cifar10_1245",
            "ve/ncsn/celeba", "ve/ncsn/celeba_5", "ve/ncsn/celeba_124", "ve/ncsn/celeba_1245"]


def official_config(name: str) -> ml_collections.ConfigDict:
    """`configs/<name>.py`'s config (the official one, defects fixed)."""
    return importlib.import_module("configs." + name.replace("/", ".")).get_config()


@functools.lru_cache(maxsize=None)
def count_params_of(name: str, num_scales: int) -> int:
    """Parameter count of a full-size (nf = 128) network; nothing else in a config changes it."""
    config = official_config("ve/ncsnv2/cifar10")
    config.model.name, config.model.num_scales = name, num_scales
    config.model.num_classes = num_scales
    return count_params(config)


def count_params(config) -> int:
    shapes = jax.eval_shape(functools.partial(mutils.init_model, config=config),
                            jax.random.PRNGKey(0))
    return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(shapes))


def run_shrunk(config, image_size: int):
    """Initialises the config's network at batch 1 with nf = 4 and runs it once."""
    config.data.image_size = image_size
    config.model.nf = 4
    model = mutils.create_model(config)
    # rbg keys: the same init code, but XLA compiles its random bits much faster than threefry's.
    variables = mutils.init_model(jax.random.key(0, impl="rbg"), config)
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, image_size, image_size, 3))
    out = model.apply(variables, x, jnp.array([config.model.num_scales - 1]), train=False)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


# Full-size parameter counts (nf = 128); the small case's count equals the official one.
FULL_PARAMS = {"ncsnv2_64": 29694083, "ncsnv2_128": 83445379,
               ("ncsn", 10): 30117635, ("ncsn", 232): 39750659, ("ncsn", 500): 51379715}


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_configs_build_and_run(name):
    config = official_config(name)
    assert config.model.nf == 128
    key = config.model.name if config.model.name != "ncsn" else ("ncsn", config.model.num_scales)
    assert count_params_of(config.model.name, config.model.num_scales) == FULL_PARAMS[key]
    # Shrunk to the smallest image the network supports.
    run_shrunk(config, get_model(config.model.name).downsampling())


def test_ncsnv2_256_builds_and_runs():
    config = official_config("ve/ncsnv2/bedroom")
    config.model.name = "ncsnv2_256"
    assert get_model("ncsnv2_256").downsampling() == 8
    run_shrunk(config, 8)


@pytest.mark.parametrize("name, image_size", [("ncsnv2_64", 15), ("ncsnv2_128", 6),
                                              ("ncsnv2_256", 12), ("ncsn", 7)])
def test_image_size_that_does_not_fit_is_rejected(name, image_size):
    config = official_config("ve/ncsnv2/cifar10")
    config.model.name, config.data.image_size = name, image_size
    with pytest.raises(ValueError, match="data.image_size"):
        count_params(config)


@pytest.mark.parametrize("key, value", [("model.normalization", "GroupNorm"),
                                        ("model.num_classes", 9), ("model.nonlinearity", "gelu")])
def test_unsupported_model_settings_are_rejected(key, value):
    # The NCSN configs tie model.num_classes to num_scales by reference; this one has no such key.
    config = official_config("ve/ncsnv2/cifar10")
    config.model.name = "ncsn"
    config.model[key.split(".")[1]] = value
    with pytest.raises(ValueError, match=key):
        count_params(config)


def ncsn_case():
    """(config, random PyTorch state dict) of an NCSN v1 of the case's size. Its keys follow from
    the official NCSNv2 keys (same modules): every InstanceNorm++ becomes an `embed`
    (num_scales, 3C), and the RefineNet blocks gain `{i}_{j}_norm`, `msf.norms.{i}` and
    `crp.norms.{i}` before their convs."""
    config = case_config(CASE)
    config.model.name, config.model.scale_by_sigma = "ncsn", False
    n = config.model.num_scales
    rng = np.random.RandomState(0)

    def embed(c):  # rows [gamma | alpha | beta]
        return np.concatenate([1 + 0.2 * rng.randn(n, 2 * c), 0.2 * rng.randn(n, c)], axis=1)

    state = {}
    for key, shape, _ in case_meta(CASE)["state_dict_keys"]:
        key = key.removeprefix("module.")
        if key.endswith(".alpha"):
            state[key.replace(".alpha", ".embed.weight")] = embed(shape[0])
        rcu = re.fullmatch(r"(.*\d_\d)_conv\.weight", key)
        fused = re.fullmatch(r"(.*\.(msf|crp))\.convs\.(\d)\.weight", key)
        if rcu or fused:
            norm = f"{rcu[1]}_norm" if rcu else f"{fused[1]}.norms.{fused[3]}"
            state[f"{norm}.embed.weight"] = embed(shape[1])
        if key != "sigmas" and not key.endswith((".gamma", ".beta", ".alpha")):
            fan_in = np.prod(shape[1:]) if len(shape) == 4 else 9 * shape[0]
            state[key] = rng.randn(*shape) / np.sqrt(fan_in)
    return config, {k: v.astype(np.float32) for k, v in state.items()}


def torch_ncsn(state, x, y):
    """The official PyTorch NCSN v1 forward (models/ncsnv2.py `NCSN` with models/layers.py blocks),
    with its crashes fixed as ours (conditional InstanceNorm++, dilation 1 by default, 'SAME'
    padding), written functionally over a state dict. x: (B, C, H, W), y: (B,) int64."""
    S, F = {k: torch.from_numpy(v) for k, v in state.items()}, torch.nn.functional
    act = F.elu

    def conv(h, p, dilation=1):
        w = S[f"{p}.weight"]
        return F.conv2d(h, w, S.get(f"{p}.bias"), padding=dilation * (w.shape[-1] // 2),
                        dilation=dilation)

    def norm(h, p):
        gamma, alpha, beta = S[f"{p}.embed.weight"][y].chunk(3, dim=-1)
        means = h.mean(dim=(2, 3))
        means = (means - means.mean(-1, keepdim=True)) / torch.sqrt(
            means.var(-1, keepdim=True) + 1e-5)
        h = F.instance_norm(h, eps=1e-5) + means[..., None, None] * alpha[..., None, None]
        return gamma[..., None, None] * h + beta[..., None, None]

    def mean_pool(h):
        return sum([h[:, :, ::2, ::2], h[:, :, 1::2, ::2], h[:, :, ::2, 1::2],
                    h[:, :, 1::2, 1::2]]) / 4.0

    def residual(h_in, p, resample, dilation):
        h = conv(act(norm(h_in, f"{p}.normalize1")), f"{p}.conv1", dilation)
        h = act(norm(h, f"{p}.normalize2"))
        if resample == "down" and dilation == 1:
            shortcut = mean_pool(conv(h_in, f"{p}.shortcut.conv"))
            return shortcut + mean_pool(conv(h, f"{p}.conv2.conv"))
        shortcut = conv(h_in, f"{p}.shortcut", dilation) if f"{p}.shortcut.weight" in S else h_in
        return shortcut + conv(h, f"{p}.conv2", dilation)

    def rcu(h, p, n_blocks):
        for i in range(1, n_blocks + 1):
            r = h
            for j in (1, 2):
                h = conv(act(norm(h, f"{p}.{i}_{j}_norm")), f"{p}.{i}_{j}_conv")
            h = h + r
        return h

    def refine(xs, p, end):
        hs = [rcu(h, f"{p}.adapt_convs.{i}", 2) for i, h in enumerate(xs)]
        h = hs[0]
        if len(hs) > 1:
            h = sum(F.interpolate(conv(norm(h, f"{p}.msf.norms.{i}"), f"{p}.msf.convs.{i}"),
                                  size=xs[0].shape[2:], mode="bilinear", align_corners=True)
                    for i, h in enumerate(hs))
        h = path = act(h)
        for i in (0, 1):
            path = conv(F.avg_pool2d(norm(path, f"{p}.crp.norms.{i}"), 5, stride=1, padding=2),
                        f"{p}.crp.convs.{i}")
            h = path + h
        return rcu(h, f"{p}.output_convs", 3 if end else 1)

    h = conv(2 * x - 1, "begin_conv")
    layers = []
    for stage, (resample, dilation) in [("res1", (None, 1)), ("res2", ("down", 1)),
                                        ("res3", ("down", 2)), ("res4", ("down", 4))]:
        h = residual(h, f"{stage}.0", resample, dilation)
        h = residual(h, f"{stage}.1", None, dilation)
        layers.append(h)
    h = refine([layers[3]], "refine1", False)
    h = refine([layers[2], h], "refine2", False)
    h = refine([layers[1], h], "refine3", False)
    h = refine([layers[0], h], "refine4", True)
    return conv(act(norm(h, "normalizer")), "end_conv")


def test_ncsn_matches_the_fixed_official_forward():
    config, state = ncsn_case()
    params, dropped = ncsn_convert.torch_to_flax(state, config)
    assert dropped == set()
    x = np.random.RandomState(1).rand(2, 8, 8, 3).astype(np.float32)
    y = np.array([0, config.model.num_scales - 1])
    config.data.image_size = 8
    out = mutils.create_model(config).apply(unflatten_dict(params), x, y)
    with torch.no_grad():
        ref = torch_ncsn(state, torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y))
    assert_rel(out, ref.permute(0, 2, 3, 1).numpy())


def test_ncsn_mapping_of_the_conditional_state_dict():
    config, state = ncsn_case()
    params, dropped = ncsn_convert.torch_to_flax(state, config)
    assert dropped == set()
    shapes = flatten_dict(jax.eval_shape(
        functools.partial(mutils.init_model, config=config), jax.random.PRNGKey(0)))
    assert set(params) == set(shapes)
    for key, value in params.items():
        assert value.shape == shapes[key].shape, key
    embed = ("params", "RefineBlock_1", "MSFBlock_0", "ConditionalInstanceNorm2dPlus_1", "Embed_0",
             "embedding")
    np.testing.assert_array_equal(params[embed], state["refine2.msf.norms.1.embed.weight"])
