"""The ml_collections config tree under configs/: 3 defaults + 41 experiments, loaded by path.

Checks that every file loads the way `main.py --config FILE` loads it (by file path), that the keys
the library reads exist with consistent values, and that the official defects stay fixed.
"""
from __future__ import annotations

import copy
import importlib.util
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# The experiment configs import their defaults as `configs.default_*`; main.py gets the repo root
# on sys.path as its script directory, a test run needs it too (`pytest` alone does not add it).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from score_jax import config_lib  # noqa: E402

DEFAULTS = [
    "default_celeba_configs.py",
    "default_cifar10_configs.py",
    "default_lsun_configs.py",
]
EXPERIMENTS = [
    "subvp/cifar10_ddpm_continuous.py",
    "subvp/cifar10_ddpmpp_continuous.py",
    "subvp/cifar10_ddpmpp_deep_continuous.py",
    "subvp/cifar10_ddpmpp_deep_continuous_likelihood.py",
    "subvp/cifar10_ncsnpp_continuous.py",
    "subvp/cifar10_ncsnpp_deep_continuous.py",
    "ve/bedroom_ncsnpp_continuous.py",
    "ve/celeba_ncsnpp.py",
    "ve/celebahq_256_ncsnpp_continuous.py",
    "ve/celebahq_ncsnpp_continuous.py",
    "ve/church_ncsnpp_continuous.py",
    "ve/cifar10_ddpm.py",
    "ve/cifar10_ncsnpp.py",
    "ve/cifar10_ncsnpp_continuous.py",
    "ve/cifar10_ncsnpp_deep_continuous.py",
    "ve/ffhq_256_ncsnpp_continuous.py",
    "ve/ffhq_ncsnpp_continuous.py",
    "ve/ncsn/celeba.py",
    "ve/ncsn/celeba_124.py",
    "ve/ncsn/celeba_1245.py",
    "ve/ncsn/celeba_5.py",
    "ve/ncsn/cifar10.py",
    "ve/ncsn/cifar10_124.py",
    "ve/ncsn/cifar10_1245.py",
    "ve/ncsn/cifar10_5.py",
    "ve/ncsnv2/bedroom.py",
    "ve/ncsnv2/celeba.py",
    "ve/ncsnv2/cifar10.py",
    "vp/cifar10_ddpmpp.py",
    "vp/cifar10_ddpmpp_continuous.py",
    "vp/cifar10_ddpmpp_deep_continuous.py",
    "vp/cifar10_ddpmpp_deep_continuous_likelihood.py",
    "vp/cifar10_ncsnpp.py",
    "vp/cifar10_ncsnpp_continuous.py",
    "vp/cifar10_ncsnpp_deep_continuous.py",
    "vp/ddpm/bedroom.py",
    "vp/ddpm/celebahq.py",
    "vp/ddpm/church.py",
    "vp/ddpm/cifar10.py",
    "vp/ddpm/cifar10_continuous.py",
    "vp/ddpm/cifar10_unconditional.py",
]
SDES = {"vesde", "vpsde", "subvpsde"}
MODEL_NAMES = {"ncsnpp", "ddpm", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256", "ncsn"}
PREDICTORS = {"none", "reverse_diffusion", "euler_maruyama", "ancestral_sampling"}
CORRECTORS = {"none", "langevin", "ald"}
DATASETS = {"CIFAR10", "CELEBA", "LSUN", "CelebAHQ", "FFHQ"}
FOLDER_SDE = {"ve": "vesde", "vp": "vpsde", "subvp": "subvpsde"}

# Keys the library reads from every experiment config.
REQUIRED = {
    "training": ["sde", "continuous", "batch_size", "n_iters", "snapshot_freq",
                 "snapshot_freq_for_preemption", "log_freq", "eval_freq", "n_jitted_steps",
                 "reduce_mean", "likelihood_weighting", "snapshot_sampling"],
    "sampling": ["method", "predictor", "corrector", "snr", "n_steps_each", "probability_flow",
                 "noise_removal"],
    "eval": ["begin_ckpt", "end_ckpt", "batch_size", "enable_sampling", "num_samples",
             "enable_loss", "enable_bpd", "bpd_dataset"],
    "data": ["dataset", "image_size", "num_channels", "centered", "random_flip",
             "uniform_dequantization", "data_dir"],
    "model": ["name", "sigma_min", "sigma_max", "num_scales", "ema_rate", "dropout",
              "normalization", "nonlinearity", "nf", "scale_by_sigma", "embedding_type"],
    "optim": ["optimizer", "lr", "beta1", "eps", "warmup", "grad_clip", "weight_decay"],
}
UNET_KEYS = ["ch_mult", "num_res_blocks", "attn_resolutions", "resamp_with_conv", "conditional"]
NCSNPP_KEYS = ["fir", "fir_kernel", "skip_rescale", "resblock_type", "progressive",
               "progressive_input", "progressive_combine", "attention_type", "init_scale"]
# Real-valued keys are floats everywhere, so that `--config.x=0.5` overrides type-check.
FLOAT_KEYS = ["model.sigma_min", "model.sigma_max", "model.dropout", "model.ema_rate",
              "optim.lr", "optim.beta1", "optim.eps", "optim.grad_clip", "optim.weight_decay",
              "sampling.snr"]
INT_KEYS = ["training.batch_size", "training.n_iters", "training.n_jitted_steps",
            "training.log_freq", "model.num_scales", "model.nf", "data.image_size",
            "data.num_channels", "sampling.n_steps_each", "optim.warmup"]


def _load(rel: str):
    """Imports configs/<rel> by file path, as ml_collections' config_flags does."""
    path = CONFIGS / rel
    name = "_cfgtest_" + re.sub(r"\W", "_", rel[:-3])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(rel: str) -> ml_collections.ConfigDict:
    return config_lib.load_config(CONFIGS / rel)


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _has(config, dotted: str) -> bool:
    try:
        _get(config, dotted)
    except (KeyError, AttributeError):
        return False
    return True


def test_loading_every_config_imports_no_torch():
    code = ("import pathlib, sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from score_jax import config_lib\n"
            f"for p in sorted(pathlib.Path({str(CONFIGS)!r}).rglob('*.py')):\n"
            # hub.py builds its config from a diffusers folder (tests/test_hub.py).
            "    if p.name not in ('__init__.py', 'hub.py'): config_lib.load_config(p)\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", timeout=120)


@pytest.mark.parametrize("rel", DEFAULTS)
def test_defaults(rel):
    config = _config(rel)
    assert "sde" not in config.training and "name" not in config.model
    assert "data_dir" in config.data and config.data.data_dir is None
    for key in FLOAT_KEYS:
        if _has(config, key):  # model.ema_rate is set by the experiments
            assert type(_get(config, key)) is float, (rel, key)
    # The config's ode_* literals and ode.solver_options' defaults for a block without them (an
    # old workdir's config.json) are written in two places: they must agree.
    from score_jax import ode

    for block in ("sampling", "eval"):
        assert ode.solver_options(config[block], block) == ode.solver_options(
            ml_collections.ConfigDict(), block), (rel, block)


@pytest.mark.parametrize("rel", EXPERIMENTS)
def test_experiment_keys_and_consistency(rel):
    config = _config(rel)
    for section, keys in REQUIRED.items():
        for key in keys:
            assert key in config[section], f"{rel}: {section}.{key} missing"
    assert config.seed == 42
    t, s, d, m, o = config.training, config.sampling, config.data, config.model, config.optim

    # training
    assert t.sde in SDES
    assert t.sde == FOLDER_SDE[rel.split("/")[0]]
    assert type(t.continuous) is bool and type(t.reduce_mean) is bool
    assert type(t.likelihood_weighting) is bool and type(t.snapshot_sampling) is bool
    assert t.batch_size >= 1 and t.n_iters >= 1 and t.n_jitted_steps >= 1
    for freq in ["log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption"]:
        # The jitted loop advances n_jitted_steps at a time and tests `step % freq == 0`.
        assert t[freq] % t.n_jitted_steps == 0, (rel, freq)
    assert t.snapshot_freq % t.snapshot_freq_for_preemption == 0

    # sampling
    assert s.method == "pc"
    assert s.predictor in PREDICTORS and s.corrector in CORRECTORS
    assert (s.predictor, s.corrector) != ("none", "none")
    assert s.snr > 0 and s.n_steps_each >= 1
    assert type(s.probability_flow) is bool and type(s.noise_removal) is bool

    # data
    assert d.dataset in DATASETS
    assert d.num_channels == 3 and "channels" not in d
    assert type(d.centered) is bool and type(d.random_flip) is bool
    assert type(d.uniform_dequantization) is bool
    # VP/sub-VP priors are N(0, I): data in [-1, 1]; the VE configs keep [0, 1].
    assert d.centered == (t.sde != "vesde")
    if d.dataset == "LSUN":
        assert d.category in {"bedroom", "church_outdoor"}
    if d.dataset in {"CelebAHQ", "FFHQ"}:
        assert "tfrecords_path" in d

    # model / SDE
    assert m.name in MODEL_NAMES
    assert type(m.num_scales) is int and m.num_scales >= 1
    assert 0 < m.sigma_min < m.sigma_max
    if t.sde != "vesde" or "beta_min" in m:
        assert 0 < m.beta_min <= m.beta_max
    assert 0. <= m.ema_rate < 1.
    assert type(m.scale_by_sigma) is bool
    if m.name in {"ncsnpp", "ddpm"}:
        for key in UNET_KEYS:
            assert key in m, f"{rel}: model.{key} missing"
        n_res = len(m.ch_mult)
        assert d.image_size % 2 ** (n_res - 1) == 0
        resolutions = {d.image_size // 2 ** i for i in range(n_res)}
        assert set(m.attn_resolutions) <= resolutions
        assert m.normalization == "GroupNorm"
    if m.name == "ncsnpp":
        for key in NCSNPP_KEYS:
            assert key in m, f"{rel}: model.{key} missing"
        assert m.embedding_type in {"fourier", "positional"}
        if m.embedding_type == "fourier":
            assert t.continuous and "fourier_scale" in m
        if not t.continuous:
            assert m.embedding_type == "positional"
    if m.name == "ddpm":
        # GroupNorm with 32 groups on every feature width.
        assert all(m.nf * mult % 32 == 0 for mult in m.ch_mult)
    if m.name.startswith("ncsn") and m.name != "ncsnpp":
        assert not t.continuous  # noise-index conditioned networks: discrete training
        assert m.normalization == "InstanceNorm++" and s.corrector == "ald"
        assert m.interpolation == "bilinear"
        # official get_network: < 96 px -> ncsnv2_64, 96..128 -> ncsnv2_128, 129..256 -> ncsnv2_256
        if m.name in {"ncsn", "ncsnv2_64"}:
            assert d.image_size < 96 and d.image_size % 8 == 0
        elif m.name == "ncsnv2_128":
            assert 96 <= d.image_size <= 128
        else:
            assert 128 < d.image_size <= 256
    if m.name == "ncsn":
        assert m.num_classes == m.num_scales
        assert m.scale_by_sigma is False
    else:
        assert "num_classes" not in m
    folder = rel.rsplit("/", 1)[0]
    expected_family = {"ve/ncsn": {"ncsn"}, "ve/ncsnv2": {"ncsnv2_64", "ncsnv2_128", "ncsnv2_256"},
                       "vp/ddpm": {"ddpm"}}.get(folder)
    if expected_family:
        assert m.name in expected_family

    # optim
    assert o.optimizer == "Adam" and o.lr > 0 and 0 < o.beta1 < 1 and o.eps > 0
    assert o.warmup >= 0 and o.weight_decay >= 0

    # types that keep command-line overrides working
    for key in FLOAT_KEYS:
        assert type(_get(config, key)) is float, (rel, key)
    for key in INT_KEYS:
        assert type(_get(config, key)) is int, (rel, key)

    # a config survives the copies and dumps the library makes of it
    assert copy.deepcopy(config).to_dict() == config.to_dict()
    assert config.to_json()


def test_fixed_official_defects():
    bedroom = _config("ve/ncsnv2/bedroom.py")
    assert bedroom.training.continuous is False and "continuouse" not in bedroom.training
    celeba = _config("ve/ncsn/celeba.py")
    assert celeba.training.sde == "vesde" and "loss" not in celeba.training
    for rel in EXPERIMENTS:
        config = _config(rel)
        if config.model.name == "ncsn":
            assert config.model.num_classes == config.model.num_scales, rel
        assert "channels" not in config.data, rel
    for rel in ["ve/ffhq_ncsnpp_continuous.py", "ve/celebahq_ncsnpp_continuous.py"]:
        config = _config(rel)
        assert config.data.tfrecords_path is None  # a str placeholder: set it on the command line
        assert config.eval.enable_loss is True and config.eval.bpd_dataset == "test"


def _parse(argv):
    """Parses argv with absl + ml_collections config_flags, as main.py does."""
    from absl import flags
    from ml_collections import config_flags
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # inside ml_collections
def test_command_line_overrides():
    ncsn = str(CONFIGS / "ve/ncsn/cifar10.py")
    config = _parse(["main.py", f"--config={ncsn}", "--config.training.batch_size=8",
                     "--config.model.num_scales=20", "--config.model.sigma_max=2.5",
                     "--config.data.data_dir=/tmp/tfds"])
    assert config.training.batch_size == 8
    assert config.model.num_scales == 20 and config.model.num_classes == 20  # tied by reference
    assert config.model.sigma_max == 2.5 and config.data.data_dir == "/tmp/tfds"
    ffhq = str(CONFIGS / "ve/ffhq_ncsnpp_continuous.py")
    config = _parse(["main.py", f"--config={ffhq}",
                     "--config.data.tfrecords_path=/d/ffhq-r10.tfrecords"])
    assert config.data.tfrecords_path == "/d/ffhq-r10.tfrecords"


@pytest.mark.parametrize("from_root", [True, False], ids=["repo_root", "elsewhere"])
def test_main_loads_config_by_path_and_rejects_unknown_mode(tmp_path, from_root):
    # From the repo root with the relative path of the docstrings, and from elsewhere with absolute
    # paths: main.py's own directory (the repo root) makes `configs` importable without install.
    rel = "configs/ve/cifar10_ncsnpp_continuous.py"
    main, config, cwd = (("main.py", rel, ROOT) if from_root
                         else (str(ROOT / "main.py"), str(ROOT / rel), tmp_path))
    cmd = [sys.executable, main, "--config", config, "--config.training.batch_size=8",
           "--workdir", str(tmp_path / "wd"), "--mode", "nosuchmode"]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "nosuchmode" in text and "valid modes" in text, text
    assert "Traceback" not in text, text
