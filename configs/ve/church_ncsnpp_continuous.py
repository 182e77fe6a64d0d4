r"""NCSN++ (progressive growing, 7 resolutions) on 256x256 LSUN church_outdoor, VE SDE,
continuous-time training, sigma_max 380.

Reproduces: the paper's LSUN church 256x256 samples (qualitative only: the paper reports no
number for it; the official README shows samples of checkpoint `ve/church_ncsnpp_continuous`).
PC sampler: reverse-diffusion predictor + Langevin corrector, snr 0.075, 2000 noise scales.

Run:
    python main.py --config configs/ve/church_ncsnpp_continuous.py \
        --workdir workdir/ve_church_ncsnpp_continuous --mode train

Official: configs/ve/church_ncsnpp_continuous.py (same keys and values).
"""
from configs.default_lsun_configs import get_default_configs


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

    # data
    data = config.data
    data.category = 'church_outdoor'

    # model
    model = config.model
    model.name = 'ncsnpp'
    model.sigma_max = 380.
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'output_skip'
    model.progressive_input = 'input_skip'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.fourier_scale = 16.
    model.conv_size = 3

    return config
