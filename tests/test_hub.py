"""diffusers folders (Hugging Face hub format) -> our networks: output parity with diffusers'
`UNet2DModel` on random weights, the scheduler -> SDE mapping, bad input, `hf://` sources, and
convert -> sample -> likelihood from the command line. Nothing is downloaded."""
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, ScoreSdeVeScheduler, UNet2DModel

from score_jax import config_lib, convert
from score_jax import sde as sde_lib
from score_jax.convert import hub
from score_jax.models import get_model

REPO = pathlib.Path(__file__).resolve().parents[1]
SKIP_DOWN, SKIP_UP = "SkipDownBlock2D", "SkipUpBlock2D"

# UNet2DModel arguments of each supported layout, at tiny sizes (attention on 128 channels: below
# that, diffusers' Attn* blocks normalise with other group counts than NCSN++).
NCSNPP = dict(time_embedding_type="fourier", norm_eps=1e-6, mid_block_scale_factor=math.sqrt(2),
              norm_num_groups=None, attention_head_dim=None)
DDPM = dict(norm_eps=1e-6, freq_shift=1, downsample_padding=0, attention_head_dim=None)
LAYOUTS = {
    # google/ncsnpp-* layout: Skip blocks, attention at one level, 2x-1 outside the network.
    "ncsnpp": dict(NCSNPP, sample_size=16, block_out_channels=(32, 128), layers_per_block=1,
                   down_block_types=(SKIP_DOWN, "AttnSkipDownBlock2D"),
                   up_block_types=("AttnSkipUpBlock2D", SKIP_UP)),
    "ncsnpp_3_levels_centering": dict(
        NCSNPP, sample_size=16, block_out_channels=(32, 128, 128), layers_per_block=2,
        center_input_sample=True, down_block_types=(SKIP_DOWN, "AttnSkipDownBlock2D", SKIP_DOWN),
        up_block_types=(SKIP_UP, "AttnSkipUpBlock2D", SKIP_UP)),
    # google/ddpm-* layout: attention after every block of an attention level.
    "ddpm": dict(DDPM, sample_size=16, block_out_channels=(32, 64), layers_per_block=2,
                 flip_sin_to_cos=False, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D")),
    "ddpm_flip_1_channel": dict(
        DDPM, sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 32, 64),
        layers_per_block=1, flip_sin_to_cos=True,
        down_block_types=("AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D")),
}


def make_unet(layout, std=0.3, seed=0):
    """A diffusers UNet2DModel of `layout` with N(0, std^2) weights (eval mode)."""
    torch.manual_seed(seed)
    model = UNet2DModel(**LAYOUTS[layout])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def labels_for(layout):
    """Noise levels (NCSN++: sigma) or DDPM step indices, float32 (2,)."""
    return torch.tensor([0.5, 30.0] if layout.startswith("ncsnpp") else [3.0, 700.0])


def rel_err(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_outputs_match_diffusers(layout, tmp_path):
    unet = make_unet(layout)
    unet.save_pretrained(tmp_path / "model")
    config, ckpt = convert.load_diffusers_checkpoint(tmp_path / "model")
    assert ckpt["step"] == 0 and ckpt["ema_params"] is ckpt["params"]
    channels = unet.config.in_channels
    x = torch.randn(2, channels, unet.config.sample_size, unet.config.sample_size)
    if layout == "ncsnpp_3_levels_centering":
        x = torch.rand_like(x)  # data in [0, 1]: the network maps it to 2x - 1
    labels = labels_for(layout)
    with torch.no_grad():
        ref = unet(x, labels).sample.numpy().transpose(0, 2, 3, 1)
    model = get_model(config.model.name)(config=config)
    ours = model.apply({"params": ckpt["params"]}, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                       jnp.asarray(labels.numpy()))
    assert rel_err(ours, ref) <= 1e-4, rel_err(ours, ref)
    count = sum(np.size(v) for v in jax.tree_util.tree_leaves(ckpt["params"]))
    assert count == sum(v.numel() for v in unet.state_dict().values())
    assert config.model.name == ("ncsnpp" if layout.startswith("ncsnpp") else "ddpm")
    assert config.model.center_input == unet.config.center_input_sample
    assert config.data.centered == (config.model.name == "ddpm")  # diffusers' pipelines
    assert config.data.num_channels == channels


def test_bin_weights_and_old_attention_names(tmp_path):
    """A `.bin` state dict (torch.load(weights_only=True)) with the pre-0.14 attention names
    (query, key, value, proj_attn) converts to the same network."""
    unet = make_unet("ddpm")
    unet.save_pretrained(tmp_path / "new")
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in unet.state_dict().items():
        for new, name in old.items():
            key = key.replace(f".{new}.", f".{name}.")
        state[key] = value
    assert any(".proj_attn." in k for k in state)
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    _, ref = convert.load_diffusers_checkpoint(tmp_path / "new")
    _, ckpt = convert.load_diffusers_checkpoint(folder)
    flat_ref, flat = (dict(_flat(c["params"])) for c in (ref, ckpt))
    assert flat.keys() == flat_ref.keys()
    for k in flat:
        np.testing.assert_array_equal(flat[k], flat_ref[k], err_msg=k)


def _flat(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def _pipeline(tmp_path, layout, scheduler):
    root = tmp_path / "pipeline"
    make_unet(layout).save_pretrained(root / "unet")
    scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "ScoreSdeVePipeline"}))
    return root


def test_score_sde_ve_scheduler_maps_to_the_ve_sde(tmp_path):
    scheduler = ScoreSdeVeScheduler(num_train_timesteps=100, snr=0.075, sigma_min=0.02,
                                    sigma_max=50.0, correct_steps=2)
    config = hub.load_diffusers_config(_pipeline(tmp_path, "ncsnpp", scheduler))
    assert (config.training.sde, config.training.continuous) == ("vesde", True)
    assert (config.sampling.snr, config.sampling.n_steps_each) == (0.075, 2)
    assert (config.sampling.predictor, config.sampling.corrector) == \
        ("reverse_diffusion", "langevin")
    sde, eps = sde_lib.get_sde(config)
    assert eps == scheduler.config.sampling_eps
    scheduler.set_timesteps(100)
    scheduler.set_sigmas(100)
    t = jnp.asarray(scheduler.timesteps.numpy())
    np.testing.assert_allclose(sde.sigma(t), scheduler.sigmas.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sde.discrete_sigmas),
                               scheduler.discrete_sigmas.numpy(), rtol=1e-5)


def test_ddpm_scheduler_maps_to_the_discrete_vp_sde(tmp_path):
    scheduler = DDPMScheduler(num_train_timesteps=200, beta_start=2e-4, beta_end=0.05)
    config = hub.load_diffusers_config(_pipeline(tmp_path, "ddpm", scheduler))
    assert (config.training.sde, config.training.continuous) == ("vpsde", False)
    assert config.sampling.predictor == "ancestral_sampling"
    sde, _ = sde_lib.get_sde(config)
    assert sde.N == 200
    np.testing.assert_allclose(sde.discrete_betas, scheduler.betas.numpy(), rtol=1e-5)
    np.testing.assert_allclose(sde.alphas_cumprod, scheduler.alphas_cumprod.numpy(), rtol=1e-5)
    # The continuous SDE's marginal at the network's label t / (N - 1) is the chain's.
    _, std = sde.marginal_prob(jnp.zeros((1, 1)), jnp.asarray([150 / 199]))
    assert abs(float(std[0]) - math.sqrt(1 - float(scheduler.alphas_cumprod[150]))) < 2e-3


def test_config_picks_the_matching_official_file(tmp_path):
    """NCSN++ 256 px with sigma_max 380 starts from the church config, DDPM 32 px from CIFAR-10."""
    layout = dict(LAYOUTS["ncsnpp"], sample_size=256)
    root = tmp_path / "church"
    (root / "scheduler").mkdir(parents=True)
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel",
                                                            **_jsonable(layout)}))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 2000, "sigma_max": 380.0,
         "sigma_min": 0.01, "snr": 0.075}))
    config = hub.load_diffusers_config(root)
    assert (config.data.dataset, config.data.category) == ("LSUN", "church_outdoor")
    assert config.model.attn_resolutions == (128,)
    layout = dict(LAYOUTS["ddpm"], sample_size=32)
    (root / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel",
                                                            **_jsonable(layout)}))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler"}))
    config = hub.load_diffusers_config(root)
    assert config.data.dataset == "CIFAR10" and config.model.attn_every_up_block
    assert (config.model.beta_min, config.model.beta_max, config.model.num_scales) == \
        pytest.approx((0.1, 20.0, 1000))


def _jsonable(kwargs):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


# --- bad input: an error naming the file and the reason, nothing written ---------------------

def _folder(tmp_path, layout="ddpm", edit=None):
    folder = tmp_path / "model"
    make_unet(layout).save_pretrained(folder)
    if edit:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _convert_fails(tmp_path, source, match, config):
    workdir = tmp_path / "work"
    with pytest.raises(ValueError, match=match):
        convert.convert(config, str(workdir), checkpoint=str(source))
    assert not workdir.exists(), "a failed conversion must leave no output"


@pytest.mark.parametrize("key, value, match", [
    ("_class_name", "UNet2DConditionModel", r"config\.json: _class_name='UNet2DConditionModel'"),
    ("down_block_types", ["CrossAttnDownBlock2D", "DownBlock2D"],
     r"config\.json: down_block_types=.*'CrossAttnDownBlock2D' has no network"),
    ("down_block_types", [SKIP_DOWN, "AttnDownBlock2D"], "mixes NCSN\\+\\+"),
    ("attention_head_dim", 8, "multi-head attention"),
    ("downsample_padding", 1, "downsample_padding=1"),
])
def test_unsupported_config_names_file_and_key(tmp_path, key, value, match):
    def edit(config):
        config[key] = value

    folder = _folder(tmp_path, edit=edit)
    with pytest.raises(ValueError, match=match):
        hub.load_diffusers_config(folder)
    _convert_fails(tmp_path, folder, match, config=config_lib.load_config(
        REPO / "configs" / "vp" / "ddpm" / "cifar10.py"))


def test_weights_of_another_network(tmp_path):
    """config.json says 2 blocks per level, the weights have 1: the missing tensor is named."""
    folder = _folder(tmp_path, "ddpm")
    other = make_unet("ddpm_flip_1_channel")
    other_dir = tmp_path / "other"
    other.save_pretrained(other_dir)
    os.replace(other_dir / "diffusion_pytorch_model.safetensors",
               folder / "diffusion_pytorch_model.safetensors")
    _convert_fails(tmp_path, folder,
                   r"diffusion_pytorch_model\.safetensors: tensor \S+ .*does not fit|"
                   r"diffusion_pytorch_model\.safetensors: tensor \S+ is missing",
                   hub.load_diffusers_config(folder))


def test_extra_tensor_is_named(tmp_path):
    from safetensors.torch import save_file

    folder = _folder(tmp_path, "ddpm")
    state = dict(make_unet("ddpm").state_dict())
    state["extra.weight"] = torch.zeros(3)
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    _convert_fails(tmp_path, folder, r"1 tensor\(s\) are not part .* extra\.weight",
                   hub.load_diffusers_config(folder))


class _Payload:
    """Any class: a .bin that pickles one must be refused without running anything."""


def test_pickled_bin_is_refused(tmp_path):
    folder = _folder(tmp_path, "ddpm")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in.weight": torch.zeros(1), "x": _Payload()},
               folder / "diffusion_pytorch_model.bin")
    _convert_fails(tmp_path, folder, r"diffusion_pytorch_model\.bin: refused",
                   config=hub.load_diffusers_config(folder))


def test_missing_and_truncated_weights(tmp_path):
    folder = _folder(tmp_path, "ddpm")
    path = folder / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    config = hub.load_diffusers_config(folder)
    _convert_fails(tmp_path, folder, r"safetensors: not a readable safetensors file", config)
    path.unlink()
    _convert_fails(tmp_path, folder, r"model: no weights: expected", config)
    _convert_fails(tmp_path, tmp_path, "not a diffusers folder", config)


def test_config_of_another_model_is_refused_naming_the_keys(tmp_path):
    folder = _folder(tmp_path, "ddpm")
    config = hub.load_diffusers_config(folder)
    config.model.num_res_blocks = 1
    config.model.attn_every_up_block = False
    _convert_fails(tmp_path, folder, r"model\.attn_every_up_block: False in --config, True in .*"
                   r"model\.num_res_blocks: 1 in --config, 2 in", config)


# --- hf:// sources ---------------------------------------------------------------------------

def test_parse_hf():
    assert hub.parse_hf("hf://google/ddpm-cifar10-32") == ("google/ddpm-cifar10-32", None)
    assert hub.parse_hf("hf://google/ncsnpp-ffhq-1024@a1b2c3") == ("google/ncsnpp-ffhq-1024",
                                                                  "a1b2c3")
    assert hub.parse_hf("hf://o/n@refs/pr/1") == ("o/n", "refs/pr/1")
    for bad in ("hf://google", "hf://google/", "hf:///x", "hf://a/b/c", "hf://a/b@"):
        with pytest.raises(ValueError, match="OWNER/NAME"):
            hub.parse_hf(bad)


def test_hf_source_downloads_with_huggingface_hub(tmp_path, monkeypatch):
    folder = _folder(tmp_path, "ddpm")
    calls = []

    def fake_download(repo_id, revision):
        calls.append((repo_id, revision))
        return str(folder)

    monkeypatch.setattr(hub, "_snapshot_download", fake_download)
    config, ckpt = convert.load_diffusers_checkpoint("hf://google/ddpm-tiny@v1")
    assert calls == [("google/ddpm-tiny", "v1")]
    _, ref = convert.load_diffusers_checkpoint(folder)
    np.testing.assert_array_equal(ckpt["params"]["Conv_0"]["kernel"],
                                  ref["params"]["Conv_0"]["kernel"])
    # Offline: the download's error is reported with the id.
    def offline(repo_id, revision):
        raise OSError("Cannot reach https://huggingface.co: offline")

    monkeypatch.setattr(hub, "_snapshot_download", offline)
    _convert_fails(tmp_path, "hf://google/ddpm-tiny", r"hf://google/ddpm-tiny: download failed "
                   r"\(OSError: Cannot reach", config)


def test_hf_source_without_huggingface_hub(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    config = config_lib.load_config(REPO / "configs" / "vp" / "ddpm" / "cifar10.py")
    _convert_fails(tmp_path, "hf://google/ddpm-cifar10-32",
                   r"hf://google/ddpm-cifar10-32: downloading needs huggingface_hub: "
                   r"pip install -e '\.\[hub\]'", config)


# --- the command line: convert -> sample -> likelihood ---------------------------------------

def test_convert_sample_likelihood_from_the_command_line(tmp_path):
    """A 1-channel 8x8 DDPM pipeline folder on the digits: convert, then sample and bits/dim,
    each `main.py` with `--config=configs/hub.py:DIR`."""
    root = tmp_path / "pipeline"
    unet = UNet2DModel(**dict(LAYOUTS["ddpm_flip_1_channel"], block_out_channels=(32, 32),
                              down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                              up_block_types=("AttnUpBlock2D", "UpBlock2D")))
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.05)
    unet.save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=50, beta_start=0.1 / 50, beta_end=20.0 / 50).save_pretrained(
        root / "scheduler")
    workdir = tmp_path / "work"
    common = [f"--config={REPO / 'configs' / 'hub.py'}:{root}", f"--workdir={workdir}",
              "--config.data.dataset=DIGITS", f"--config.data.data_dir={tmp_path / 'tfds'}",
              "--config.eval.batch_size=150", "--config.eval.num_samples=150",
              "--config.eval.bpd_num_repeats=1"]

    def main(*args):
        out = subprocess.run([sys.executable, str(REPO / "main.py"), *common, *args],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]

    main("--mode=convert", f"--checkpoint={root}")
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["model"]["name"] == "ddpm" and recorded["training"]["sde"] == "vpsde"
    main("--mode=sample")
    [path] = (workdir / "samples" / "ckpt_0").glob("*/samples_0.npz")  # one sampler's folder
    samples = np.load(path)
    arrays = [samples[k] for k in samples.files]
    assert arrays[0].shape == (150, 8, 8, 1) and np.isfinite(arrays[0]).all()
    main("--mode=likelihood")
    bpd = json.loads((workdir / "eval" / "bpd_ckpt_0.json").read_text())
    value = next(v for k, v in bpd.items() if "bpd" in k)
    assert np.isfinite(value) and value > 0
