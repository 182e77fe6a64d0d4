r"""DDPM++ (4 residual blocks per resolution) on CIFAR-10, VP SDE, continuous-time training.

Reproduces: "DDPM++ cont. (VP)": Table 3 of the paper, FID 2.55 / IS 9.58; Table 2, NLL
3.16 bits/dim and FID 3.93 with the black-box ODE sampler (official README, checkpoint
`vp/cifar10_ddpmpp_continuous`). Sampled with Euler-Maruyama (no corrector).
DDPM++ is the `ncsnpp` network without FIR resampling and without progressive
input (`fir = False`, `progressive_input = 'none'`).

Run:
    python main.py --config configs/vp/cifar10_ddpmpp_continuous.py \
        --workdir workdir/vp_cifar10_ddpmpp_continuous --mode train

Official: configs/vp/cifar10_ddpmpp_continuous.py (same keys and values).
Its docstring calls the model "NCSNv3" (an old name for DDPM++).
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
