"""NCSN++ / DDPM++ / DDPM networks: FIR resampling, every flag combination, every official config.

Parity with the official outputs is in test_convert.py (it needs converted weights).
"""
import importlib
import itertools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from score_jax.models import get_model
from score_jax.models import up_or_down_sampling as updown
from score_jax.models import utils as mutils

import reference as refcases

REPO = pathlib.Path(__file__).resolve().parents[1]


def _upfirdn2d_reference(x, k, up, down, pad):
    """Direct definition on one (H, W) plane: zero insertion, pad/crop, true convolution, stride."""
    h, w = x.shape
    z = np.zeros((h * up, w * up))
    z[::up, ::up] = x
    p0, p1 = pad
    z = np.pad(z, ((max(p0, 0), max(p1, 0)),) * 2)
    z = z[max(-p0, 0):z.shape[0] - max(-p1, 0), max(-p0, 0):z.shape[1] - max(-p1, 0)]
    kh, kw = k.shape
    out = np.array([[np.sum(z[i:i + kh, j:j + kw] * k[::-1, ::-1])
                     for j in range(z.shape[1] - kw + 1)] for i in range(z.shape[0] - kh + 1)])
    return out[::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)),
                                         (2, 1, (-1, 2)), (1, 2, (2, -1))])
def test_upfirdn2d_matches_its_definition(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    k = np.arange(1, 13, dtype=np.float32).reshape(3, 4)[:, :3]  # asymmetric: tests the flip
    ours = np.asarray(updown.upfirdn2d(jnp.asarray(x), k, up=up, down=down, pad=pad))
    for c in range(2):
        np.testing.assert_allclose(ours[0, :, :, c], _upfirdn2d_reference(x[0, :, :, c], k, up,
                                                                          down, pad), rtol=1e-5)


def _conv_same(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_fused_fir_convolutions_equal_resample_then_convolve_inside():
    """The fused ops pad once, so only their borders differ from the unfused sequence."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)
    k = (1, 3, 3, 1)
    up = updown.upsample_conv_2d(x, w, k)
    assert up.shape == (2, 16, 16, 5)
    np.testing.assert_allclose(up[:, 2:-2, 2:-2],
                               _conv_same(updown.upsample_2d(x, k), w)[:, 2:-2, 2:-2],
                               atol=1e-5)
    down = updown.conv_downsample_2d(x, w, k)
    assert down.shape == (2, 4, 4, 5)
    np.testing.assert_allclose(down[:, 1:-1, 1:-1],
                               updown.downsample_2d(_conv_same(x, w), k)[:, 1:-1, 1:-1], atol=1e-5)
    # A constant image stays constant inside under FIR resampling (kernels are normalised).
    ones = jnp.ones((1, 8, 8, 1))
    np.testing.assert_allclose(updown.upsample_2d(ones, k)[:, 2:-2, 2:-2], 1.0, rtol=1e-6)
    np.testing.assert_allclose(updown.downsample_2d(ones, k)[:, 1:-1, 1:-1], 1.0, rtol=1e-6)


def _small_config(name="ncsnpp", **model):
    """A tiny network config (8x8 images, two levels) built on the DDPM++ reference case."""
    config = refcases.case_config("ddpmpp_vp_cont_small" if name == "ncsnpp" else "ddpm_vp_small")
    config.data.image_size = 8
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (4,)
    config.model.nf = 8 if name == "ncsnpp" else 32
    config.model.update(model)
    return config


def _labels(config, batch):
    if config.model.name == "ncsnpp" and config.model.embedding_type == "fourier":
        return jnp.linspace(0.5, 20.0, batch)  # noise levels (log is embedded)
    if config.model.scale_by_sigma:
        return jnp.arange(batch, dtype=jnp.int32) * 7  # indices into the sigma table
    return jnp.linspace(1.0, 999.0, batch)


def compile_fast(fn, *args):
    """`fn` jitted and compiled for `args` without XLA's backend optimisations: compiling is what
    dominates the tests' time on CPU, and the numbers are the same to float32 rounding."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def random_variables(config, seed=0):
    """Variables of the config's network filled with N(0, 0.1^2) numbers (no jitted init: XLA
    takes far longer to compile the initialisers than the network)."""
    template = jax.eval_shape(lambda: mutils.init_model(jax.random.PRNGKey(0), config))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), template)


def _forward(config, batch=1, train=False):
    model = mutils.create_model(config)
    size, channels = config.data.image_size, config.data.num_channels
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, size, size, channels))
    labels = _labels(config, batch)
    variables = random_variables(config)
    out = compile_fast(lambda v, x, l: model.apply(v, x, l, train=train,
                                                   rngs={"dropout": jax.random.PRNGKey(2)}),
                       variables, x, labels)(variables, x, labels)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    return model, variables, x, labels, out


# Combinations beyond the parity cases, including those the official code crashes on:
# resblock 'ddpm' + fir (upsample_conv_2d), fir=False Upsample, progressive 'residual' + fir.
FLAG_SETS = [
    dict(resblock_type="ddpm", fir=True, resamp_with_conv=True, progressive="residual",
         progressive_input="input_skip", progressive_combine="cat", embedding_type="positional",
         conditional=False, nonlinearity="elu", scale_by_sigma=True, skip_rescale=False),
    dict(resblock_type="ddpm", fir=False, resamp_with_conv=True, progressive="output_skip",
         progressive_input="residual", progressive_combine="sum", nonlinearity="lrelu"),
    dict(resblock_type="biggan", fir=False, resamp_with_conv=False, progressive="residual",
         progressive_input="input_skip", progressive_combine="sum", embedding_type="fourier",
         nonlinearity="relu", skip_rescale=False, init_scale=0.5),
    dict(resblock_type="ddpm", fir=True, resamp_with_conv=False, progressive="output_skip",
         progressive_input="input_skip", progressive_combine="cat", conditional=False),
    dict(resblock_type="biggan", fir=True, resamp_with_conv=True, progressive="output_skip",
         progressive_input="input_skip", progressive_combine="sum", embedding_type="fourier",
         scale_by_sigma=True),
]


@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: "-".join(
    f"{k}={v}" for k, v in f.items() if k in ("resblock_type", "fir", "progressive",
                                                 "progressive_input")))
def test_ncsnpp_flag_combinations_run(flags):
    config = _small_config(**flags)
    _, variables, _, _, _ = _forward(config)
    params = variables["params"]
    if not config.model.conditional:
        assert "Dense_0" not in params
    assert ("GaussianFourierProjection_0" in params) == (config.model.embedding_type == "fourier")


def test_ddpm_without_conditioning_or_resampling_convolutions_runs():
    config = _small_config("ddpm", conditional=False, resamp_with_conv=False, nonlinearity="relu")
    _, variables, _, _, _ = _forward(config)
    assert not any(k.startswith("Dense") for k in variables["params"])
    assert "Dense_0" not in variables["params"]["ResnetBlockDDPM_0"]
    assert "Downsample_0" not in variables["params"]


def test_dropout_only_in_training():
    config = _small_config(dropout=0.5)
    model = mutils.create_model(config)
    variables = random_variables(config)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3))
    labels = _labels(config, 2)

    def run(v, x, l, rng):
        return (model.apply(v, x, l, train=False, rngs={"dropout": rng}),
                model.apply(v, x, l, train=True, rngs={"dropout": rng}))

    run = compile_fast(run, variables, x, labels, jax.random.PRNGKey(0))
    eval_a, train_a = run(variables, x, labels, jax.random.PRNGKey(0))
    eval_b, train_b = run(variables, x, labels, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(eval_a, eval_b)
    assert float(jnp.max(jnp.abs(train_a - train_b))) > 0
    assert float(jnp.max(jnp.abs(train_a - eval_a))) > 0


def test_parameter_tree_uses_official_jax_names():
    config = refcases.case_config("ncsnpp_ve_cont_small")
    variables = jax.eval_shape(lambda: mutils.init_model(jax.random.PRNGKey(0), config))
    params = variables["params"]
    blocks = [k for k in params if k.startswith("ResnetBlockBigGANpp_")]
    assert len(blocks) == 21 and "ResnetBlockBigGANpp_20" in params
    assert {k for k in params if not k.startswith(("ResnetBlock", "AttnBlockpp_"))} == {
        "GaussianFourierProjection_0", "Dense_0", "Dense_1", "Conv_0", "Downsample_0",
        "Downsample_1", "GroupNorm_0", "Conv_1"}
    assert set(params["Downsample_0"]) == {"Conv2d_0"}
    assert params["Downsample_0"]["Conv2d_0"]["weight"].shape == (3, 3, 3, 16)
    assert set(params["ResnetBlockBigGANpp_2"]) == {"GroupNorm_0", "Conv_0", "Dense_0",
                                                    "GroupNorm_1", "Conv_1", "Conv_2"}
    assert set(params["AttnBlockpp_0"]) == {"GroupNorm_0", "NIN_0", "NIN_1", "NIN_2", "NIN_3"}
    assert params["AttnBlockpp_0"]["NIN_0"]["W"].shape == (32, 32)
    assert params["GroupNorm_0"]["scale"].shape == (16,)


@pytest.mark.parametrize("name", ["ncsnpp", "ddpm"])
def test_image_size_that_does_not_fit_is_a_clear_error(name):
    config = _small_config(name)
    config.data.image_size = 7  # two levels need an even size
    with pytest.raises(ValueError, match=r"data\.image_size=7 .*resolutions \[7\.0, 3\.5\]"):
        mutils.init_model(jax.random.PRNGKey(0), config)


def test_bad_flag_values_are_clear_errors():
    with pytest.raises(ValueError, match="model.progressive='skip' is unknown"):
        mutils.init_model(jax.random.PRNGKey(0), _small_config(progressive="skip"))
    with pytest.raises(ValueError, match="model.nonlinearity='gelu' is unknown"):
        mutils.init_model(jax.random.PRNGKey(0), _small_config(nonlinearity="gelu"))
    with pytest.raises(ValueError, match="multiples of 32"):
        mutils.init_model(jax.random.PRNGKey(0), _small_config("ddpm", nf=16))
    with pytest.raises(ValueError, match="model.name='nope' is unknown"):
        get_model("nope")


def _official_configs():
    """(path, config) of every config of the ncsnpp/ddpm families under configs/."""
    found = []
    for path in sorted((REPO / "configs").rglob("*.py")):
        if path.name.startswith("_") or "default" in path.name or path.name == "hub.py":
            continue  # hub.py: a diffusers folder's config (tests/test_hub.py)
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        get_config = getattr(importlib.import_module(module), "get_config", None)
        if get_config is None:
            continue
        config = get_config()
        if config.model.name in ("ncsnpp", "ddpm"):
            found.append((str(path.relative_to(REPO)), config))
    return found


def _shrunk(config):
    """The same flags on a tiny network: 8x8 images, two levels, one block per level, attention
    at 4x4, nf 8 (32 for DDPM's GroupNorm(32))."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.image_size = 8
    config.model.ch_mult = (1, 2)
    config.model.attn_resolutions = (4,)
    config.model.num_res_blocks = 1
    config.model.nf = 32 if config.model.name == "ddpm" else 8
    return config


def _network_flags(config):
    """Everything that changes the code path of a shrunk network (sizes are shrunk away)."""
    keys = ["name", "conditional", "resblock_type", "fir", "fir_kernel", "progressive",
            "progressive_input", "progressive_combine", "embedding_type", "skip_rescale",
            "init_scale", "scale_by_sigma", "nonlinearity", "resamp_with_conv"]
    return tuple(str(config.model.get(k)) for k in keys) + (config.data.centered,)


def test_every_official_config_builds_and_runs():
    configs = _official_configs()
    assert len(configs) >= 20, "the official ncsnpp/ddpm configs are missing under configs/"
    seen = {}
    for path, config in configs:
        small = _shrunk(config)
        key = _network_flags(small)
        if key in seen:
            continue
        seen[key] = path
        try:
            _forward(small)
        except Exception as e:  # name the config in the failure
            raise AssertionError(f"{path} (shrunk) failed: {type(e).__name__}: {e}") from e
    assert seen


def test_flag_sets_cover_every_official_flag_value():
    """The flag sweep plus the parity cases see every value the official configs use."""
    seen = {k: set() for k in ("resblock_type", "fir", "progressive", "progressive_input",
                               "progressive_combine", "embedding_type", "nonlinearity",
                               "conditional", "scale_by_sigma", "skip_rescale",
                               "resamp_with_conv")}
    cases = [refcases.case_config(c).model for c in ("ncsnpp_ve_cont_small",
                                                     "ddpmpp_vp_cont_small")]
    for model in itertools.chain(cases, [_small_config(**f).model for f in FLAG_SETS]):
        for key in seen:
            seen[key].add(str(model[key]).lower())
    for _, config in _official_configs():
        if config.model.name == "ncsnpp":
            for key in seen:
                assert str(config.model[key]).lower() in seen[key], (key, config.model[key])
