r"""NCSN++ (4 residual blocks per resolution) on CIFAR-10, VE SDE, continuous-time training.

Reproduces: "NCSN++ cont. (VE)" of Table 3 of the paper, FID 2.38 / IS 9.83 (the numbers the
official README lists for checkpoint `ve/cifar10_ncsnpp_continuous`), sampled with the PC sampler
(reverse-diffusion predictor + one Langevin corrector step, snr 0.16).

Run:
    python main.py --config configs/ve/cifar10_ncsnpp_continuous.py \
        --workdir workdir/ve_cifar10_ncsnpp_continuous --mode train

Official: configs/ve/cifar10_ncsnpp_continuous.py (same keys and values).
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vesde'
    training.continuous = True

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
    model.fourier_scale = 16.
    model.conv_size = 3

    return config
