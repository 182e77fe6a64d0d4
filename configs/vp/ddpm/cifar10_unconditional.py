r"""DDPM network on CIFAR-10 without time/noise conditioning (`model.conditional = False`, the
"technique 3" of NCSNv2), discrete DDPM objective, ancestral sampling.

Reproduces: an ablation of noise conditioning; the official README lists no checkpoint or
number for it and the paper reports none, so none is claimed.

Run:
    python main.py --config configs/vp/ddpm/cifar10_unconditional.py \
        --workdir workdir/vp_ddpm_cifar10_unconditional --mode train

Official: configs/vp/ddpm/cifar10_unconditional.py (same keys and values).
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
    model.conditional = False

    return config
