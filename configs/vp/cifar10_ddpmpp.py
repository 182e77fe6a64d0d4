r"""DDPM++ (4 residual blocks per resolution) on CIFAR-10, trained with the discrete DDPM
objective (VP, 1000 steps).

Reproduces: "DDPM++" of Table 3 of the paper, FID 2.78 / IS 9.64 (official README,
checkpoint `vp/cifar10_ddpmpp`), with ancestral sampling (no corrector).
DDPM++ is the `ncsnpp` network without FIR resampling and without progressive
input (`fir = False`, `progressive_input = 'none'`).

Run:
    python main.py --config configs/vp/cifar10_ddpmpp.py --workdir workdir/vp_cifar10_ddpmpp \
        --mode train

Official: configs/vp/cifar10_ddpmpp.py (same keys and values).
Its docstring calls the model "NCSNv3 ... with continuous sigmas" (an old name; this config
is discrete).
`model.fourier_scale` is kept from the official config but unused: the embedding is
positional.
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
    model.name = 'ncsnpp'
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = False
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'none'
    model.progressive_input = 'none'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.embedding_type = 'positional'
    model.fourier_scale = 16.
    model.conv_size = 3

    return config
