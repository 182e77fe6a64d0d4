r"""NCSN++ on 64x64 CelebA trained with the discrete SMLD objective (VE, 1000 noise scales,
sigma_max 90).

Reproduces: NCSN++ on 64x64 CelebA, presumably from the paper's architecture exploration on
CelebA (appendix; our reading, not verified). The official README lists no checkpoint or
number for it, so none is claimed.
PC sampler: reverse-diffusion predictor + Langevin corrector, snr 0.17.

Run:
    python main.py --config configs/ve/celeba_ncsnpp.py --workdir workdir/ve_celeba_ncsnpp \
        --mode train

Official: configs/ve/celeba_ncsnpp.py (same keys and values). `model.sigma_begin = 90` is kept
because the official config has it, but nothing reads it (a leftover NCSNv2 name for
`model.sigma_max`, which is 90 already through the CelebA defaults).
"""
from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vesde'
    training.continuous = False

    # sampling
    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'langevin'

    # model
    model = config.model
    model.name = 'ncsnpp'
    model.scale_by_sigma = True
    model.sigma_begin = 90.  # unused (official leftover), see the module docstring
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'none'
    model.progressive_input = 'residual'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.conv_size = 3
    model.embedding_type = 'positional'

    return config
