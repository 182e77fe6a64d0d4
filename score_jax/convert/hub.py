"""diffusers `UNet2DModel` folders and `hf://OWNER/NAME[@REVISION]` models -> our config and Flax
variables (`--mode convert --checkpoint DIR | hf://...`; download needs the `hub` extra).

Two layouts are ours: score-SDE NCSN++ (Fourier embedding, Skip*Block2D; label sigma, output the
score) -> `ncsnpp`, and DDPM (positional embedding; label the step index in [0, N), output epsilon)
-> `ddpm`. `model.apply(variables, x NHWC, labels)` equals diffusers' `unet(x NCHW, labels).sample`
in diffusers' data range (`data.centered`: False for NCSN++/VE, True for DDPM). The scheduler sets
the SDE: `ScoreSdeVeScheduler` -> VE; `DDPMScheduler` / `DDIMScheduler` (linear betas, epsilon)
-> discrete VP with beta_min = N beta_start, beta_max = N beta_end."""
from __future__ import annotations

import importlib
import json
import math
import pathlib
import re

import numpy as np
from flax import traverse_util

from score_jax import checkpoints

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_HF = re.compile(r"hf://([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?")
# UNet2DModel.__init__ defaults (diffusers 0.42), for keys an older config.json lacks.
_UNET_DEFAULTS = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2,
    "mid_block_scale_factor": 1, "downsample_padding": 1, "downsample_type": "conv",
    "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu", "attention_head_dim": 8,
    "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None,
}
# Block type -> (family, has attention).
_DOWN = {"SkipDownBlock2D": ("ncsnpp", False), "AttnSkipDownBlock2D": ("ncsnpp", True),
         "DownBlock2D": ("ddpm", False), "AttnDownBlock2D": ("ddpm", True)}
_UP = {"SkipUpBlock2D": ("ncsnpp", False), "AttnSkipUpBlock2D": ("ncsnpp", True),
       "UpBlock2D": ("ddpm", False), "AttnUpBlock2D": ("ddpm", True)}
# Base config modules per family, tried in order (matching image size, then sigma_max).
_BASES = {
    "ncsnpp": ["configs.ve.cifar10_ncsnpp_continuous", "configs.ve.celebahq_256_ncsnpp_continuous",
               "configs.ve.ffhq_256_ncsnpp_continuous", "configs.ve.church_ncsnpp_continuous",
               "configs.ve.bedroom_ncsnpp_continuous", "configs.ve.ffhq_ncsnpp_continuous",
               "configs.ve.celebahq_ncsnpp_continuous"],
    "ddpm": ["configs.vp.ddpm.cifar10", "configs.vp.ddpm.celebahq", "configs.vp.ddpm.church",
             "configs.vp.ddpm.bedroom"],
}
_SQRT2 = math.sqrt(2.0)


def is_diffusers_source(source) -> bool:
    """Whether `--checkpoint` names a diffusers folder or an `hf://` model."""
    return str(source).startswith("hf://") or pathlib.Path(source).is_dir()


def parse_hf(source: str) -> tuple[str, str | None]:
    """`hf://OWNER/NAME[@REVISION]` -> (repo id, revision or None); ValueError when malformed."""
    match = _HF.fullmatch(source)
    if not match:
        raise ValueError(f"{source!r} is not a hub model: expected hf://OWNER/NAME[@REVISION]")
    return match.group(1), match.group(2)


def _snapshot_download(repo_id: str, revision: str | None) -> str:
    """huggingface_hub's download of the files a diffusers UNet2DModel folder needs; its path."""
    from huggingface_hub import snapshot_download  # the `hub` extra

    return snapshot_download(repo_id, revision=revision, allow_patterns=[
        "model_index.json", "config.json", "scheduler_config.json", "unet/config.json",
        "scheduler/scheduler_config.json", *WEIGHT_FILES, *(f"unet/{w}" for w in WEIGHT_FILES)])


def resolve(source) -> pathlib.Path:
    """The local folder of `source`: the folder itself, or the hub snapshot of an `hf://` id."""
    source = str(source)
    if not source.startswith("hf://"):
        path = pathlib.Path(source)
        if not path.is_dir():
            raise ValueError(f"{path}: not a folder (a diffusers model or pipeline folder)")
        return path
    repo_id, revision = parse_hf(source)
    try:
        importlib.import_module("huggingface_hub")
    except ImportError:
        raise ValueError(f"{source}: downloading needs huggingface_hub: pip install -e '.[hub]' "
                         "(or download the folder elsewhere and pass its path)") from None
    try:
        return pathlib.Path(_snapshot_download(repo_id, revision))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo or revision, HTTP errors
        raise ValueError(f"{source}: download failed ({type(e).__name__}: {e}); on a host "
                         "without network, download the folder elsewhere and pass its "
                         "path") from None


def _read_json(path: pathlib.Path) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _folders(root: pathlib.Path):
    """(folder of the UNet's config.json and weights, scheduler config file or None)."""
    if (root / "config.json").is_file():
        scheduler = root / "scheduler_config.json"
        return root, scheduler if scheduler.is_file() else None
    if (root / "unet" / "config.json").is_file():
        scheduler = root / "scheduler" / "scheduler_config.json"
        return root / "unet", scheduler if scheduler.is_file() else None
    raise ValueError(f"{root}: not a diffusers folder: needs config.json (a model folder) or "
                     "unet/config.json (a pipeline folder)")


def _network(unet: dict, where: pathlib.Path) -> tuple[str, dict, dict]:
    """(family, {dotted config key: value}, layout) of a UNet2DModel config.json."""
    u = {**_UNET_DEFAULTS, **unet}

    def refuse(key, why):
        raise ValueError(f"{where}: {key}={u.get(key)!r}: {why}")

    if unet.get("_class_name") != "UNet2DModel":
        refuse("_class_name", "only diffusers' UNet2DModel (NCSN++ and DDPM layouts) converts")
    down, up = list(u["down_block_types"]), list(u["up_block_types"])
    channels = [int(c) for c in u["block_out_channels"]]
    levels = len(channels)
    if not (len(down) == len(up) == levels):
        refuse("block_out_channels", f"{levels} levels, but {len(down)} down and {len(up)} up "
               "blocks")
    for key, table, types in (("down_block_types", _DOWN, down), ("up_block_types", _UP, up)):
        unknown = [t for t in types if t not in table]
        if unknown:
            refuse(key, f"block type {unknown[0]!r} has no network here; supported: "
                   f"{', '.join(table)}")
    families = {_DOWN[t][0] for t in down} | {_UP[t][0] for t in up}
    if len(families) != 1:
        refuse("down_block_types", f"mixes NCSN++ (Skip*) and DDPM blocks (up: {up})")
    family = families.pop()
    attn_down = [_DOWN[t][1] for t in down]
    attn_up = [_UP[t][1] for t in reversed(up)]  # up block u is level L - 1 - u
    if attn_down != attn_up:
        refuse("up_block_types", f"attention at other levels than down_block_types {down}; "
               "our networks attend at the same resolutions on both paths")
    size = u["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            refuse("sample_size", "only square images")
        size = size[0]
    if not isinstance(size, int) or size < 1:
        refuse("sample_size", "needs the image size")
    if u["in_channels"] != u["out_channels"]:
        refuse("out_channels", f"differs from in_channels={u['in_channels']}")
    if u["act_fn"] not in ("silu", "swish"):
        refuse("act_fn", "diffusers' time embedding always uses SiLU; only silu/swish maps")
    if not math.isclose(float(u["norm_eps"]), 1e-6, rel_tol=1e-9):
        refuse("norm_eps", "our GroupNorms use epsilon 1e-6")
    nf = channels[0]
    for key, want in (("time_embedding_dim", (None, 4 * nf)), ("class_embed_type", (None,)),
                      ("num_class_embeds", (None,)), ("resnet_time_scale_shift", ("default",)),
                      ("mid_block_type", ("UNetMidBlock2D",)), ("add_attention", (True,)),
                      ("attn_norm_num_groups", (None,))):
        if u[key] not in want:
            refuse(key, f"not supported (expected {' or '.join(map(repr, want))})")
    if any(c % nf for c in channels):
        refuse("block_out_channels", f"not multiples of the first ({nf})")
    head = u["attention_head_dim"]
    attended = [channels[i] for i in range(levels) if attn_down[i]] + [channels[-1]]
    if head is not None and any(head != c for c in attended):
        refuse("attention_head_dim", f"multi-head attention ({attended[0] // head} heads); our "
               "networks have one head (None or the channel count)")
    attn_resolutions = tuple(size // 2 ** i for i in range(levels) if attn_down[i])
    keys = {"model.name": family, "model.nf": nf, "model.ch_mult": tuple(c // nf for c in channels),
            "model.num_res_blocks": int(u["layers_per_block"]),
            "model.attn_resolutions": attn_resolutions, "model.dropout": float(u["dropout"]),
            "model.conditional": True, "model.nonlinearity": "swish",
            "model.normalization": "GroupNorm", "model.resamp_with_conv": True,
            "model.center_input": bool(u["center_input_sample"]),
            # diffusers' data range: [0, 1] in the VE pipeline, [-1, 1] in the DDPM one.
            "data.image_size": size, "data.num_channels": int(u["in_channels"]),
            "data.centered": family == "ddpm"}
    layout = {"levels": levels, "blocks": int(u["layers_per_block"]), "attn": attn_down,
              # Only the positional embedding reads it (the Fourier one is [sin, cos]).
              "flip_sin_to_cos": bool(u["flip_sin_to_cos"]) and family == "ddpm"}
    if family == "ncsnpp":
        if u["time_embedding_type"] != "fourier":
            refuse("time_embedding_type", "the Skip* (NCSN++) blocks convert with the fourier "
                   "embedding only")
        if u["in_channels"] != 3:
            refuse("in_channels", "diffusers' Skip* blocks hard-code 3 image channels")
        if u["norm_num_groups"] is not None:
            refuse("norm_num_groups", "NCSN++ uses min(channels // 4, 32) groups (None)")
        if not math.isclose(float(u["mid_block_scale_factor"]), _SQRT2, rel_tol=1e-6):
            refuse("mid_block_scale_factor", "NCSN++ rescales every skip by 1/sqrt(2)")
        # diffusers' Attn* blocks use 32 groups, ours min(C // 4, 32): equal from 128 channels.
        small = [channels[i] for i in range(levels) if attn_down[i] and channels[i] < 128]
        if small:
            refuse("block_out_channels", f"attention on {small[0]} channels: diffusers normalises "
                   "it with 32 groups, NCSN++ with channels // 4; equal from 128 channels on")
        for i in range(levels):  # AttnSkipUpBlock2D computes its first GroupNorm's groups apart
            u_idx, rev = levels - 1 - i, channels[::-1]
            if not attn_down[i]:
                continue
            prev = rev[u_idx - 1] if u_idx > 0 else rev[0]
            skip_in = rev[min(u_idx + 1, levels - 1)]
            for j in range(layout["blocks"] + 1):
                r_in = prev if j == 0 else rev[u_idx]
                r_skip = skip_in if j == layout["blocks"] else rev[u_idx]
                if min(r_in + r_skip // 4, 32) != min((r_in + r_skip) // 4, 32):
                    refuse("block_out_channels", f"AttnSkipUpBlock2D's block {j} normalises "
                           f"{r_in + r_skip} channels with {min(r_in + r_skip // 4, 32)} "
                           "groups, NCSN++ with min(channels // 4, 32)")
        keys.update({"model.resblock_type": "biggan", "model.fir": True,
                     "model.fir_kernel": [1, 3, 3, 1], "model.skip_rescale": True,
                     "model.progressive": "output_skip", "model.progressive_input": "input_skip",
                     "model.progressive_combine": "sum", "model.embedding_type": "fourier",
                     "model.fourier_scale": 16.0, "model.scale_by_sigma": True,
                     "model.init_scale": 0.0, "model.conv_size": 3,
                     "training.continuous": True})
    else:
        if u["time_embedding_type"] != "positional":
            refuse("time_embedding_type", "DDPM blocks convert with the positional embedding")
        if u["freq_shift"] != 1:
            refuse("freq_shift", "DDPM's sinusoidal embedding divides by half_dim - 1 (1)")
        if u["norm_num_groups"] != 32:
            refuse("norm_num_groups", "DDPM uses 32 groups")
        if float(u["mid_block_scale_factor"]) != 1:
            refuse("mid_block_scale_factor", "DDPM does not rescale skips (1)")
        if u["downsample_padding"] != 0:
            refuse("downsample_padding", "DDPM pads a stride-2 convolution at the end only (0)")
        for key in ("downsample_type", "upsample_type"):
            if u[key] != "conv":
                refuse(key, "DDPM resamples with a convolution ('conv')")
        keys.update({"model.scale_by_sigma": False, "model.attn_every_up_block": True,
                     "training.continuous": False})
    return family, keys, layout


def _sde(scheduler: dict | None, family: str, where) -> dict:
    """{dotted config key: value} of the SDE and sampler of a scheduler config (none: {})."""
    if scheduler is None:
        return {}
    name = scheduler.get("_class_name")

    def refuse(key, why):
        raise ValueError(f"{where}: {key}={scheduler.get(key)!r}: {why}")

    # Absent keys take the scheduler's defaults (diffusers 0.42).
    n = int(scheduler.get("num_train_timesteps", 2000 if name == "ScoreSdeVeScheduler" else 1000))
    if name == "ScoreSdeVeScheduler":
        if family != "ncsnpp":
            refuse("_class_name", "a VE scheduler with a DDPM network")
        if not math.isclose(float(scheduler.get("sampling_eps", 1e-5)), 1e-5, rel_tol=1e-9):
            refuse("sampling_eps", "our VE SDE samples down to t = 1e-5")
        return {"training.sde": "vesde", "model.sigma_min": float(scheduler.get("sigma_min", 0.01)),
                "model.sigma_max": float(scheduler.get("sigma_max", 1348.0)),
                "model.num_scales": n, "sampling.snr": float(scheduler.get("snr", 0.15)),
                "sampling.n_steps_each": int(scheduler.get("correct_steps", 1)),
                "sampling.method": "pc", "sampling.predictor": "reverse_diffusion",
                "sampling.corrector": "langevin"}
    if name in ("DDPMScheduler", "DDIMScheduler"):
        if family != "ddpm":
            refuse("_class_name", "a DDPM scheduler with an NCSN++ (Fourier, VE) network")
        if scheduler.get("beta_schedule", "linear") != "linear" or scheduler.get("trained_betas"):
            refuse("beta_schedule", "only linear betas are a VP SDE")
        if scheduler.get("prediction_type", "epsilon") != "epsilon":
            refuse("prediction_type", "our VP networks predict the noise (epsilon)")
        return {"training.sde": "vpsde",
                "model.beta_min": float(scheduler.get("beta_start", 1e-4)) * n,
                "model.beta_max": float(scheduler.get("beta_end", 0.02)) * n,
                "model.num_scales": n, "sampling.method": "pc",
                "sampling.predictor": "ancestral_sampling", "sampling.corrector": "none"}
    refuse("_class_name", "supported schedulers: ScoreSdeVeScheduler, DDPMScheduler, "
           "DDIMScheduler")


def _base_config(family: str, image_size: int, sigma_max):
    """The first of `_BASES[family]` with this image size (and sigma_max), else the first."""
    configs = [importlib.import_module(m).get_config() for m in _BASES[family]]
    same = [c for c in configs if c.data.image_size == image_size] or configs[:1]
    return next((c for c in same if c.model.sigma_max == sigma_max), same[0])


def _set(config, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def _read(source):
    root = resolve(source)
    unet_dir, scheduler_file = _folders(root)
    family, keys, layout = _network(_read_json(unet_dir / "config.json"),
                                    unet_dir / "config.json")
    scheduler = _read_json(scheduler_file) if scheduler_file else None
    keys.update(_sde(scheduler, family, scheduler_file))
    config = _base_config(family, keys["data.image_size"], keys.get("model.sigma_max"))
    for key, value in keys.items():
        _set(config, key, value)
    return config, unet_dir, family, layout


def load_diffusers_config(source):
    """The full ConfigDict of a diffusers source (no weights read): the matching `configs/` file
    (NCSN++: `ve/*_ncsnpp_continuous.py`, DDPM: `vp/ddpm/*.py`, by image size and sigma_max) with
    the model, data shape and SDE keys of the folder's config.json files."""
    return _read(source)[0]


def _load_state(folder: pathlib.Path) -> tuple[dict, pathlib.Path]:
    """({tensor name: float32 array}, file) of a diffusers model folder's weights."""
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            break
    else:
        raise ValueError(f"{folder}: no weights: expected {' or '.join(WEIGHT_FILES)}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file  # the `hub` extra
        except ImportError:
            raise ValueError(f"{path}: reading safetensors needs the safetensors package: "
                             "pip install -e '.[hub]'") from None
        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - truncated / not safetensors
            raise ValueError(f"{path}: not a readable safetensors file "
                             f"({type(e).__name__}: {e})") from None
    else:
        from score_jax import convert

        state = convert._torch_load(path)
        if not isinstance(state, dict) or not all(hasattr(v, "detach") for v in state.values()):
            raise ValueError(f"{path}: not a diffusers state dict (a mapping of tensor names to "
                             "tensors)")
        state = {k: v.detach().cpu().float().numpy() for k, v in state.items()}
    return {k: np.asarray(v, np.float32) for k, v in state.items()}, path


def _sequence(family: str, layout: dict) -> list[tuple[str, str]]:
    """(diffusers module prefix, kind) of every parameterised module, in forward order."""
    levels, blocks, attn = layout["levels"], layout["blocks"], layout["attn"]
    seq = [("time_proj", "fourier")] if family == "ncsnpp" else []
    seq += [("time_embedding.linear_1", "dense"), ("time_embedding.linear_2", "dense"),
            ("conv_in", "conv")]
    for i in range(levels):
        for j in range(blocks):
            seq.append((f"down_blocks.{i}.resnets.{j}", "resnet"))
            if attn[i]:
                seq.append((f"down_blocks.{i}.attentions.{j}", "attn"))
        if i != levels - 1:
            seq += ([(f"down_blocks.{i}.resnet_down", "resnet"),
                     (f"down_blocks.{i}.skip_conv", "combine")] if family == "ncsnpp" else
                    [(f"down_blocks.{i}.downsamplers.0.conv", "resample")])
    seq += [("mid_block.resnets.0", "resnet"), ("mid_block.attentions.0", "attn"),
            ("mid_block.resnets.1", "resnet")]
    for u in range(levels):
        level = levels - 1 - u
        for j in range(blocks + 1):
            seq.append((f"up_blocks.{u}.resnets.{j}", "resnet"))
            if attn[level] and family == "ddpm":
                seq.append((f"up_blocks.{u}.attentions.{j}", "attn"))
        if attn[level] and family == "ncsnpp":
            seq.append((f"up_blocks.{u}.attentions.0", "attn"))
        if family == "ncsnpp" and level != 0:
            seq += [(f"up_blocks.{u}.skip_norm", "norm"), (f"up_blocks.{u}.skip_conv", "conv"),
                    (f"up_blocks.{u}.resnet_up", "resnet")]
        elif family == "ddpm" and level != 0:
            seq.append((f"up_blocks.{u}.upsamplers.0.conv", "resample"))
    return seq + [("conv_norm_out", "norm"), ("conv_out", "conv")]


_KINDS = {"GaussianFourierProjection": "fourier", "Dense": "dense", "Conv": "conv",
          "ResnetBlockBigGANpp": "resnet", "ResnetBlockDDPM": "resnet", "AttnBlockpp": "attn",
          "AttnBlock": "attn", "Combine": "combine", "GroupNorm": "norm",
          "Downsample": "resample", "Upsample": "resample"}
# Pre-0.14 diffusers attention tensor names -> today's.
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _leaves(prefix: str, kind: str, block: dict, take, flip: bool) -> dict:
    """{Flax path inside the module: array} of one diffusers module; `take(name)` pops a tensor."""
    def conv(name):
        kernel = take(f"{name}.weight").transpose(2, 3, 1, 0)  # OIHW -> HWIO
        return {"kernel": kernel, "bias": take(f"{name}.bias")}

    def norm(name):
        return {"scale": take(f"{name}.weight"), "bias": take(f"{name}.bias")}

    def linear(name):
        return {"kernel": take(f"{name}.weight").T, "bias": take(f"{name}.bias")}

    def nin(name):
        w = take(f"{name}.weight")
        return {"W": (w[:, :, 0, 0] if w.ndim == 4 else w).T, "b": take(f"{name}.bias")}

    if kind == "fourier":
        return {("W",): take(f"{prefix}.weight")}
    if kind == "dense":
        out = linear(prefix)
        if flip and prefix.endswith("linear_1"):  # diffusers embeds [cos, sin], ours [sin, cos]
            half = out["kernel"].shape[0] // 2
            out["kernel"] = np.concatenate([out["kernel"][half:], out["kernel"][:half]])
        tree = out
    elif kind == "conv":
        tree = conv(prefix)
    elif kind in ("combine", "resample"):
        tree = {"Conv_0": conv(prefix)}
    elif kind == "norm":
        tree = norm(prefix)
    elif kind == "resnet":
        tree = {"GroupNorm_0": norm(f"{prefix}.norm1"), "Conv_0": conv(f"{prefix}.conv1"),
                "Dense_0": linear(f"{prefix}.time_emb_proj"),
                "GroupNorm_1": norm(f"{prefix}.norm2"), "Conv_1": conv(f"{prefix}.conv2")}
        if "Conv_2" in block:
            tree["Conv_2"] = conv(f"{prefix}.conv_shortcut")
        elif "NIN_0" in block:
            tree["NIN_0"] = nin(f"{prefix}.conv_shortcut")
    else:  # attn
        tree = {"GroupNorm_0": norm(f"{prefix}.group_norm")}
        for i, name in enumerate(("to_q", "to_k", "to_v", "to_out.0")):
            tree[f"NIN_{i}"] = nin(f"{prefix}.{name}")
    return traverse_util.flatten_dict(tree)


def diffusers_to_flax(state: dict, config, family: str, layout: dict, path) -> dict:
    """Diffusers UNet2DModel state dict -> Flax variables of `config`'s network; raises ValueError
    naming `path` and the tensor unless every tensor is used once and every leaf filled."""
    from score_jax import convert

    template = convert._variable_template(config)
    params = template["params"]
    modules = [n for n in convert._top_level_call_order(config) if n in params]
    seq = _sequence(family, layout)
    kinds = [_KINDS.get(re.sub(r"_\d+$", "", n)) for n in modules]
    if kinds != [k for _, k in seq]:
        raise ValueError(f"{path}: internal layout mismatch between diffusers' {family} "
                         f"modules and ours ({len(seq)} vs {len(modules)})")
    state = dict(state)
    for old, new in _OLD_ATTENTION.items():
        for key in [k for k in state if re.search(rf"attentions\.\d+\.{old}\.", k)]:
            state[key.replace(f".{old}.", f".{new}.")] = state.pop(key)

    def take(name):
        if name not in state:
            raise ValueError(f"{path}: tensor {name} is missing: the weights do not fit the "
                             "network of config.json")
        return state.pop(name)

    mapping = {}
    for name, (prefix, kind) in zip(modules, seq):
        for sub, array in _leaves(prefix, kind, params[name], take,
                                  layout["flip_sin_to_cos"]).items():
            key = ("params", name) + sub
            convert._check_fits(template, key, array, f"{path}: tensor {prefix}", "config.json")
            mapping[key] = array
    if state:
        extra = sorted(state)
        raise ValueError(f"{path}: {len(extra)} tensor(s) are not part of the network of "
                         f"config.json, e.g. {extra[0]} {state[extra[0]].shape}")
    return convert._fill(mapping, template, path)


def load_diffusers_checkpoint(source):
    """(config, checkpoint) of a diffusers source: `load_diffusers_config(source)` and
    `{'params', 'ema_params', 'step': 0}` (both trees the folder's weights). Raises ValueError
    naming the file and the reason for unsupported or inconsistent input."""
    config, unet_dir, family, layout = _read(source)
    state, path = _load_state(unet_dir)
    variables = diffusers_to_flax(state, config, family, layout, path)
    return config, {**variables, "ema_params": variables["params"], "step": 0}


def convert_diffusers(config, workdir, source) -> pathlib.Path:
    """`--mode convert` of a diffusers source: checks that `config` defines the folder's network
    and SDE (ValueError naming every differing key), writes the orbax checkpoint and
    `W/config.json`; nothing is written on a failure."""
    from score_jax import config_lib

    hub_config, checkpoint = load_diffusers_checkpoint(source)
    ours = json.loads(json.dumps(config_lib.defining_keys(config)))
    theirs = json.loads(json.dumps(config_lib.defining_keys(hub_config)))
    changed = [k for k in sorted(set(ours) | set(theirs))
               if ours.get(k, "<absent>") != theirs.get(k, "<absent>")]
    if changed:
        diffs = "; ".join(f"{k}: {ours.get(k, '<absent>')!r} in --config, "
                          f"{theirs.get(k, '<absent>')!r} in {source}" for k in changed)
        raise ValueError(f"--config does not define the network of {source}: {diffs}. Use "
                         f"--config=configs/hub.py:{source}")
    config_lib.check_workdir_config(config, workdir, record=False)
    out = checkpoints.save_converted(workdir, checkpoint)
    config_lib.check_workdir_config(config, workdir, record=True)
    return out
