"""Parity of converted diffusers UNet2DModels with diffusers itself (README, "Hugging Face hub").

For each layout of tests/test_hub.py: random N(0, 0.3^2) weights (3 seeds), save_pretrained,
`convert.load_diffusers_checkpoint`, and the max |ours - diffusers| / max |diffusers| of one forward
pass on random inputs. Needs the test extra (diffusers, torch).

    PYTHONPATH=. python benchmarks/hub_parity.py
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


def main(seeds=3):
    print("| layout (test id) | network | parameters | max rel. error |")
    print("|---|---|---:|---:|")
    for layout in sorted(test_hub.LAYOUTS):
        errors = []
        for seed in range(seeds):
            unet = test_hub.make_unet(layout, seed=seed)
            with tempfile.TemporaryDirectory() as folder:
                unet.save_pretrained(folder)
                config, ckpt = convert.load_diffusers_checkpoint(folder)
            torch.manual_seed(100 + seed)
            size = unet.config.sample_size
            x = torch.randn(2, unet.config.in_channels, size, size)
            labels = test_hub.labels_for(layout)
            with torch.no_grad():
                ref = unet(x, labels).sample.numpy().transpose(0, 2, 3, 1)
            ours = get_model(config.model.name)(config=config).apply(
                {"params": ckpt["params"]}, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                jnp.asarray(labels.numpy()))
            errors.append(test_hub.rel_err(ours, ref))
        count = sum(np.size(v) for v in jax.tree_util.tree_leaves(ckpt["params"]))
        print(f"| `{layout}` | {config.model.name} | {count:,} | {max(errors):.1e} |")


if __name__ == "__main__":
    main()
