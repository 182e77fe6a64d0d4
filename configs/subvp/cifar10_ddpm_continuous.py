r"""DDPM network on CIFAR-10, sub-VP SDE, continuous-time training ("DDPM cont. (sub-VP)").

Reproduces: "DDPM cont. (sub-VP)" of Table 2 of the paper, NLL 3.05 bits/dim and FID 3.56
with the black-box ODE sampler (official README, checkpoint `subvp/cifar10_ddpm_continuous`).
Sampled with Euler-Maruyama (no corrector).

Run:
    python main.py --config configs/subvp/cifar10_ddpm_continuous.py \
        --workdir workdir/subvp_cifar10_ddpm_continuous --mode train

Official: configs/subvp/cifar10_ddpm_continuous.py (same keys and values).
`model.embedding_type` ('fourier', inherited from the defaults) is not read by the `ddpm`
network, which always uses the DDPM sinusoidal embedding.
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'subvpsde'
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
