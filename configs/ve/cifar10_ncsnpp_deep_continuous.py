r"""NCSN++ deep (8 residual blocks per resolution) on CIFAR-10, VE SDE, continuous-time training.

Reproduces: "NCSN++ cont. (deep, VE)" of Table 3 of the paper, FID 2.20 / IS 9.89, the paper's
headline CIFAR-10 result (official README, checkpoint `ve/cifar10_ncsnpp_deep_continuous`), with
the PC sampler (reverse-diffusion predictor + Langevin corrector, snr 0.16). Trained for 950k
steps instead of 1.3M.

Run:
    python main.py --config configs/ve/cifar10_ncsnpp_deep_continuous.py \
        --workdir workdir/ve_cifar10_ncsnpp_deep_continuous --mode train

Official: configs/ve/cifar10_ncsnpp_deep_continuous.py (same keys and values).
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vesde'
    training.continuous = True
    training.n_iters = 950001

    # sampling
    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'langevin'

    # model
    model = config.model
    model.name = 'ncsnpp'
    model.fourier_scale = 16.
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 8
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

    return config
