"""Parity of converted diffusers UNet2DModels with diffusers itself (README, "Hugging Face hub").

For each layout of tests/test_hub.py: random N(0, 0.3^2) weights (3 seeds), save_pretrained,
`convert.load_diffusers_checkpoint`, and the max |ours - diffusers| / max |diffusers| of one forward
pass on random inputs. Needs the test extra (diffusers, torch).

    PYTHONPATH=. python benchmarks/hub_parity.py          # the test layouts, 3 seeds
    PYTHONPATH=. python benchmarks/hub_parity.py --full   # full-size layouts, 1 seed

`--full`: the layouts we expect of google/ncsnpp-celebahq-256 (diffusers' own NCSN++ test layout at
the paper's size: 7 levels, attention at 16 px) and google/ddpm-cifar10-32 (Ho et al.'s CIFAR-10
network), batch 1 - not read from the hub (no network here).
"""
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import test_hub  # noqa: E402  (the layouts and the weight draw of the parity test)

from score_jax import convert  # noqa: E402
from score_jax.models import get_model  # noqa: E402

FULL = {
    "ncsnpp_celebahq_256": dict(
        test_hub.NCSNPP, sample_size=256, block_out_channels=(128, 128, 256, 256, 256, 256, 256),
        layers_per_block=2, down_block_types=("SkipDownBlock2D",) * 4 + ("AttnSkipDownBlock2D",)
        + ("SkipDownBlock2D",) * 2, up_block_types=("SkipUpBlock2D",) * 2
        + ("AttnSkipUpBlock2D",) + ("SkipUpBlock2D",) * 4),
    "ddpm_cifar10_32": dict(
        test_hub.DDPM, sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        flip_sin_to_cos=False,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
}


def main(seeds=3, full=False):
    if full:
        test_hub.LAYOUTS.update(FULL)
        seeds = 1
    print("| layout | network | parameters | max rel. error |")
    print("|---|---|---:|---:|")
    for layout in sorted(FULL if full else test_hub.LAYOUTS):
        errors = []
        for seed in range(seeds):
            unet = test_hub.make_unet(layout, seed=seed)
            with tempfile.TemporaryDirectory() as folder:
                unet.save_pretrained(folder)
                config, ckpt = convert.load_diffusers_checkpoint(folder)
            torch.manual_seed(100 + seed)
            size = unet.config.sample_size
            x = torch.randn(1 if full else 2, unet.config.in_channels, size, size)
            labels = test_hub.labels_for(layout)[: x.shape[0]]
            with torch.no_grad():
                ref = unet(x, labels).sample.numpy().transpose(0, 2, 3, 1)
            ours = get_model(config.model.name)(config=config).apply(
                {"params": ckpt["params"]}, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                jnp.asarray(labels.numpy()))
            errors.append(test_hub.rel_err(ours, ref))
        count = sum(np.size(v) for v in jax.tree_util.tree_leaves(ckpt["params"]))
        print(f"| `{layout}` | {config.model.name} | {count:,} | {max(errors):.1e} |")


if __name__ == "__main__":
    main(full="--full" in sys.argv[1:])
