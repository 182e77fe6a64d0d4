r"""NCSN v1 on CIFAR-10 with NCSNv2 techniques 1, 2, 4 and 5 (sigma_max 50, 232 noise scales,
5 Langevin steps per scale, EMA 0.999).

Reproduces: the NCSNv2 paper's (Song & Ermon, 2020) ablation of its techniques; no number in this
paper's tables.
Sampler: corrector-only PC sampling with annealed Langevin dynamics (`ald`),
5 steps per noise scale, snr 0.176.

Run:
    python main.py --config configs/ve/ncsn/cifar10_1245.py --workdir workdir/ve_ncsn_cifar10_1245 \
        --mode train

Official: configs/ve/ncsn/cifar10_1245.py, with these changes:
* the official file also defines unused local variables (`step_size`, `n_steps_each`,
  `ckpt_id`, `final_only`, `noise_removal`: NCSNv2-code leftovers, not config keys): dropped;
* `model.num_classes` added, tied to `model.num_scales` (one conditional-normalization class
  per noise scale): the official JAX NCSN reads it but no official config sets it;
* the official model code reads the channel count from `data.channels`, which no config sets;
  all our configs and code use `data.num_channels` (3 here, from the defaults);
* real-valued hyper-parameters are floats (`weight_decay = 0.`, `grad_clip = -1.`).
Kept as in the official config: `optim.amsgrad = False` (not read by our Adam) and
`model.scale_by_sigma = False` (NCSN v1 outputs the score directly).
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
    model.name = 'ncsn'
    model.scale_by_sigma = False
    model.num_scales = 232
    # One conditional InstanceNorm++ class per noise scale; a reference, so that overriding
    # --config.model.num_scales also changes it.
    model.num_classes = model.get_ref('num_scales')
    model.ema_rate = 0.999
    model.normalization = 'InstanceNorm++'
    model.nonlinearity = 'elu'
    model.nf = 128
    model.interpolation = 'bilinear'

    # optimization
    optim = config.optim
    optim.weight_decay = 0.
    optim.optimizer = 'Adam'
    optim.lr = 1e-3
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 0
    optim.grad_clip = -1.

    return config
