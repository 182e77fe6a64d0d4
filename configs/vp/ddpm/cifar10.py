r"""The original DDPM (Ho et al., 2020) on CIFAR-10: DDPM network, discrete DDPM objective
(VP, 1000 steps), ancestral sampling.

Reproduces: the DDPM row of the paper's CIFAR-10 results; the official README lists checkpoint
`vp/cifar10_ddpm` (this config) with FID 3.24, and with the probability flow ODE (Table 2)
NLL 3.28 bits/dim and FID 3.37 with the black-box ODE sampler.

Run:
    python main.py --config configs/vp/ddpm/cifar10.py --workdir workdir/vp_ddpm_cifar10 \
        --mode train

Official: configs/vp/ddpm/cifar10.py (same keys and values).
`model.embedding_type` ('fourier', inherited from the defaults) is not read by the `ddpm`
network, which always uses the DDPM sinusoidal embedding.
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vpsde'
    training.continuous = False
    training.reduce_mean = True

    # sampling
    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'ancestral_sampling'
    sampling.corrector = 'none'

    # data
    data = config.data
    data.centered = True

    # model
    model = config.model
    model.name = 'ddpm'
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True

    return config
