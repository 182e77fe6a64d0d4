r"""NCSN v1 on CelebA with NCSNv2 technique 5 only (EMA of the weights, rate 0.999).

Reproduces: the NCSNv2 paper's (Song & Ermon, 2020) ablation of its techniques; no number in this
paper's tables.
Sampler: corrector-only PC sampling with annealed Langevin dynamics (`ald`),
100 steps per noise scale, snr 0.316.

Run:
    python main.py --config configs/ve/ncsn/celeba_5.py --workdir workdir/ve_ncsn_celeba_5 \
        --mode train

Official: configs/ve/ncsn/celeba_5.py, with these changes:
* `model.num_classes` added, tied to `model.num_scales` (one conditional-normalization class
  per noise scale): the official JAX NCSN reads it but no official config sets it;
* the official model code reads the channel count from `data.channels`, which no config sets;
  all our configs and code use `data.num_channels` (3 here, from the defaults);
* real-valued hyper-parameters are floats (`sigma_max = 1.`, `grad_clip = -1.`).
Kept as in the official config: `optim.amsgrad = False` (not read by our Adam) and
`model.scale_by_sigma = False` (NCSN v1 outputs the score directly).
"""
from configs.default_celeba_configs import get_default_configs


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
    sampling.n_steps_each = 100
    sampling.snr = 0.316

    # model
    model = config.model
    model.name = 'ncsn'
    model.scale_by_sigma = False
    model.sigma_max = 1.
    model.num_scales = 10
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
