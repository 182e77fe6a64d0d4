r"""NCSN++ (4 residual blocks per resolution) on CIFAR-10, VP SDE, continuous-time training.

Reproduces: NCSN++ trained with the VP SDE on CIFAR-10, presumably from the
paper's exploration of architectures and SDEs (appendix; our reading, not verified). The
official README lists no checkpoint or number for this config, so none is claimed.
Sampled with Euler-Maruyama (no corrector).
NCSN++ here is the `ncsnpp` network with FIR resampling and residual progressive
input, trained with the VP SDE.

Run:
    python main.py --config configs/vp/cifar10_ncsnpp_continuous.py \
        --workdir workdir/vp_cifar10_ncsnpp_continuous --mode train

Official: configs/vp/cifar10_ncsnpp_continuous.py (same keys and values).
`model.fourier_scale` is kept from the official config but unused: the embedding is
positional.
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vpsde'
    training.continuous = True
    training.reduce_mean = True

    # sampling
    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'euler_maruyama'
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
    model.fourier_scale = 16.
    model.conv_size = 3

    return config
