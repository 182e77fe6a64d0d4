# %% [markdown]
# # score_jax walkthrough
#
# The paper's toolbox on one trained model: PC sampling, probability-flow ODE sampling, exact
# bits/dim, encoding to latents and decoding back, inpainting (and colorization for RGB models).
# Runs as a script or cell by cell (jupytext percent format):
#
#     python main.py --config configs/digits.py --workdir workdir/digits --mode train
#     python notebooks/walkthrough.py --config configs/digits.py --workdir workdir/digits
#
# Any workdir with a checkpoint works: a training run's, or official weights converted with
# `--mode convert` (use the matching config).

# %%
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from score_jax import checkpoints, config_lib, datasets, likelihood, sampling, utils  # noqa: E402
from score_jax import controllable_generation as cg  # noqa: E402
from score_jax import sde as sde_lib  # noqa: E402
from score_jax.models import utils as mutils  # noqa: E402


def walkthrough(config, workdir, batch=16, out_dir=None):
    """Runs every step; returns a dict of the numbers it printed (for tests)."""
    out_dir = out_dir or os.path.join(workdir, "walkthrough")
    # %% The model: config, SDE, network, EMA weights of the newest checkpoint.
    sde, eps = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    ema_params, step = checkpoints.restore_for_sampling(workdir)
    variables = {"params": ema_params}
    scaler = datasets.get_data_scaler(config)
    inverse_scaler = datasets.get_data_inverse_scaler(config)
    size, channels = config.data.image_size, config.data.num_channels
    shape = (batch, size, size, channels)
    continuous = config.training.continuous
    print(f"checkpoint step {step}, {type(sde).__name__} N={sde.N}")

    # %% PC sampling: reverse diffusion predictor + Langevin corrector (the paper's PC sampler).
    pc = sampling.get_pc_sampler(sde, model, shape, "reverse_diffusion", "langevin",
                                 inverse_scaler, snr=0.16, n_steps=1, continuous=continuous,
                                 eps=eps)
    x_pc, nfe_pc = pc(jax.random.key(0), variables)
    sampling.check_finite(x_pc)
    utils.save_samples(np.asarray(x_pc), os.path.join(out_dir, "pc"))
    print(f"PC samples {x_pc.shape}, NFE {int(nfe_pc)}")

    # %% Probability-flow ODE sampling (adaptive Dopri5, rtol = atol = 1e-5).
    ode = sampling.get_ode_sampler(sde, model, shape, inverse_scaler, rtol=1e-5, atol=1e-5,
                                   eps=eps)
    x_ode, nfe_ode = ode(jax.random.key(1), variables)
    utils.save_samples(np.asarray(x_ode), os.path.join(out_dir, "ode"))
    print(f"ODE samples, NFE {int(nfe_ode)}")

    # %% Exact likelihood of test images (uniformly dequantized, as the paper), in bits/dim.
    test = datasets.get_dataset(config, split="eval", evaluation=True, batch_size=batch,
                                uniform_dequantization=True)
    images = next(iter(test))["image"]  # (batch, H, W, C) in [0, 1]
    bpd_fn = likelihood.get_likelihood_fn(sde, model, inverse_scaler, eps=1e-5)
    bpd, z, nfe_bpd = bpd_fn(jax.random.key(2), variables, scaler(images))
    print(f"test bits/dim {float(bpd.mean()):.3f} (NFE {int(nfe_bpd)})")

    # %% Encode -> decode: the latent z from the likelihood solve, decoded by the ODE sampler.
    decode = sampling.get_ode_sampler(sde, model, shape, inverse_scaler, rtol=1e-5, atol=1e-5,
                                      eps=1e-5)
    x_back, _ = decode(jax.random.key(3), variables, z)
    roundtrip = float(jnp.abs(x_back - images).max())
    print(f"encode/decode max |error| {roundtrip:.2e} (pixels in [0, 1])")

    # %% Inpainting: keep the left half of each test image, sample the right half.
    mask = jnp.zeros(shape).at[:, :, : size // 2].set(1.0)
    inpaint = cg.get_pc_inpainter(sde, model, "reverse_diffusion", "langevin", inverse_scaler,
                                  snr=0.16, continuous=continuous, eps=eps)
    filled = inpaint(jax.random.key(4), variables, scaler(images), mask)
    utils.save_samples(np.asarray(filled), os.path.join(out_dir, "inpainted"))
    kept = float(jnp.abs((filled - images) * mask).max())
    print(f"inpainted; known pixels kept to {kept:.2e}")

    # %% Colorization (RGB models only): gray images in, colour samples out.
    if channels == 3:
        gray = jnp.repeat(images.mean(-1, keepdims=True), 3, axis=-1)
        colorize = cg.get_pc_colorizer(sde, model, "reverse_diffusion", "langevin",
                                       inverse_scaler, snr=0.16, continuous=continuous, eps=eps)
        utils.save_samples(np.asarray(colorize(jax.random.key(5), variables, scaler(gray))),
                           os.path.join(out_dir, "colorized"))
    print(f"images written to {out_dir}")
    return {"nfe_pc": int(nfe_pc), "nfe_ode": int(nfe_ode), "bpd": float(bpd.mean()),
            "roundtrip": roundtrip, "inpaint_kept": kept}


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="score_jax walkthrough")
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--workdir", default="workdir/digits")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    # As main.py: hide orbax's read-only-directory and tfds's OpenCV warnings.
    from absl import logging
    logging.set_verbosity(logging.ERROR)
    walkthrough(config_lib.load_config(args.config), args.workdir, args.batch)
