r"""NCSNv2 (Song & Ermon, 2020) on 128x128 LSUN bedroom: `ncsnv2_128` RefineNet, 1086 noise
scales from sigma 190 to 0.01, annealed Langevin dynamics (3 steps per scale), EMA 0.9999,
batch 128.

Reproduces: the NCSNv2 LSUN bedroom 128x128 model of Song & Ermon (2020) (qualitative; no
number in this paper's tables). Sampler: corrector-only PC sampling with annealed Langevin
dynamics (`ald`), snr 0.095.

Run:
    python main.py --config configs/ve/ncsnv2/bedroom.py --workdir workdir/ve_ncsnv2_bedroom \
        --mode train

Official: configs/ve/ncsnv2/bedroom.py, with these changes:
* the official file sets `training.continuouse = False` (typo): the real key
  `training.continuous` stayed True from the defaults, i.e. a continuous-time objective for a
  network conditioned on discrete noise indices. NCSNv2 is a discrete model: fixed to
  `training.continuous = False`;
* the official model code reads the channel count from `data.channels`, which no config sets;
  all our configs and code use `data.num_channels` (3 here, from the defaults);
* real-valued hyper-parameters are floats (`sigma_max = 190.`; `grad_clip = -1.`, where the
  official file wrote the int -1).
Kept as in the official config: `optim.amsgrad = False` (not read by our Adam).
"""
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()

    # training
    training = config.training
    training.batch_size = 128
    training.sde = 'vesde'
    training.continuous = False  # official: `training.continuouse` (typo), see the docstring

    # sampling
    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'none'
    sampling.corrector = 'ald'
    sampling.n_steps_each = 3
    sampling.snr = 0.095

    # data
    data = config.data
    data.category = 'bedroom'
    data.image_size = 128

    # model
    model = config.model
    model.name = 'ncsnv2_128'
    model.scale_by_sigma = True
    model.sigma_max = 190.
    model.num_scales = 1086
    model.ema_rate = 0.9999
    model.sigma_min = 0.01
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
