r"""NCSNv2 (Song & Ermon, 2020) on CIFAR-10: `ncsnv2_64` RefineNet, 232 noise scales from
sigma 50 to 0.01, annealed Langevin dynamics (5 steps per scale), EMA 0.999.

Reproduces: the NCSNv2 baseline of the paper's CIFAR-10 comparison (see Table 3 of the paper: it
quotes the NCSNv2 paper's number; the official README has no checkpoint for this config).
Sampler: corrector-only PC sampling with annealed Langevin dynamics (`ald`), snr 0.176.

Run:
    python main.py --config configs/ve/ncsnv2/cifar10.py --workdir workdir/ve_ncsnv2_cifar10 \
        --mode train

Official: configs/ve/ncsnv2/cifar10.py, with these changes:
* the official model code reads the channel count from `data.channels`, which no config sets;
  all our configs and code use `data.num_channels` (3 here, from the defaults);
* real-valued hyper-parameters are floats (`weight_decay = 0.`, `grad_clip = -1.`).
Kept as in the official config: `optim.amsgrad = False` (not read by our Adam).
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vesde'
    training.continuous = False

    # sampling
    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'none'
    sampling.corrector = 'ald'
    sampling.n_steps_each = 5
    sampling.snr = 0.176

    # model
    model = config.model
    model.name = 'ncsnv2_64'
    model.scale_by_sigma = True
    model.num_scales = 232
    model.ema_rate = 0.999
    model.normalization = 'InstanceNorm++'
    model.nonlinearity = 'elu'
    model.nf = 128
    model.interpolation = 'bilinear'

    # optimization
    optim = config.optim
    optim.weight_decay = 0.
    optim.optimizer = 'Adam'
    optim.lr = 1e-4
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 0
    optim.grad_clip = -1.

    return config
