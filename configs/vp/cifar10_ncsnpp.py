r"""NCSN++ (4 residual blocks per resolution) on CIFAR-10, trained with the discrete DDPM
objective (VP, 1000 steps).

Reproduces: NCSN++ trained with the discrete DDPM (VP) objective on CIFAR-10, presumably
from the paper's exploration of architectures and SDEs (appendix; our reading, not verified). The
official README lists no checkpoint or number for this config, so none is claimed.
Sampled with the reverse-diffusion predictor (no corrector).
NCSN++ here is the `ncsnpp` network with FIR resampling and residual progressive
input, trained with the VP SDE.

Run:
    python main.py --config configs/vp/cifar10_ncsnpp.py --workdir workdir/vp_cifar10_ncsnpp \
        --mode train

Official: configs/vp/cifar10_ncsnpp.py (same keys and values).
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
    sampling.predictor = 'reverse_diffusion'
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
