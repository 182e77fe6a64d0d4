r"""The original DDPM network (Ho et al., 2020) on CIFAR-10, trained with the discrete SMLD (VE)
objective.

Reproduces: a discrete SMLD model with the DDPM network, presumably the SMLD model of the
paper's sampler comparison (see Table 1; our reading, not verified). The official README lists
no checkpoint or number for this config, so none is claimed.
PC sampler: reverse-diffusion predictor + Langevin corrector.

Run:
    python main.py --config configs/ve/cifar10_ddpm.py --workdir workdir/ve_cifar10_ddpm \
        --mode train

Official: configs/ve/cifar10_ddpm.py (same keys and values). `model.embedding_type` ('fourier',
inherited from the defaults) is not read by the `ddpm` network, which always uses the DDPM
sinusoidal embedding of the noise index.
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
    model.name = 'ddpm'
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.conv_size = 3

    return config
