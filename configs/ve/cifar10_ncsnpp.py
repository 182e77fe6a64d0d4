r"""NCSN++ on CIFAR-10 trained with the discrete SMLD objective (VE, 1000 noise scales).

Reproduces: "NCSN++" (discrete, SMLD) of Table 3 of the paper, FID 2.45 / IS 9.73 (official
README, checkpoint `ve/cifar10_ncsnpp`), with the PC sampler (reverse-diffusion predictor +
Langevin corrector, snr 0.16). Discrete training conditions the network on the noise index, so
the time embedding is positional, not Fourier.

Run:
    python main.py --config configs/ve/cifar10_ncsnpp.py --workdir workdir/ve_cifar10_ncsnpp \
        --mode train

Official: configs/ve/cifar10_ncsnpp.py (same keys and values).
"""
from configs.default_cifar10_configs import get_default_configs


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
    model.embedding_type = 'positional'
    model.conv_size = 3

    return config
