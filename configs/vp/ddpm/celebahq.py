r"""The original DDPM (Ho et al., 2020) on 256x256 CelebA-HQ: DDPM network (6 resolutions),
discrete DDPM objective, ancestral sampling, lr 2e-5, batch 64.

Reproduces: the DDPM CelebA-HQ 256 model of Ho et al. (2020) inside this code base; no number in
this paper's tables.

Run (the data come from a TFRecord file you supply):
    python main.py --config configs/vp/ddpm/celebahq.py --workdir workdir/vp_ddpm_celebahq \
        --mode train --config.data.tfrecords_path=/path/to/celebahq-r08.tfrecords

Official: configs/vp/ddpm/celebahq.py, with these changes:
* its docstring says "bedrooms" (copy-paste slip); this is CelebA-HQ;
* `data.tfrecords_path` was the author's own 1024px file
  ('/atlas/u/yangsong/celeba_hq/-r10.tfrecords', while `data.image_size` is 256); here it is an
  empty `str` placeholder that you set on the command line (a 256px TFRecord file, or one the
  data pipeline resizes).
`model.embedding_type` ('fourier', inherited from the defaults) is not read by the `ddpm`
network, which always uses the DDPM sinusoidal embedding.
"""
from ml_collections import config_dict

from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vpsde'
    training.continuous = False
    training.reduce_mean = True

    # sampling
    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'ancestral_sampling'
    sampling.corrector = 'none'

    # data
    data = config.data
    data.dataset = 'CelebAHQ'
    data.tfrecords_path = config_dict.placeholder(str)  # official: the author's r10 file
    data.image_size = 256
    data.centered = True

    # model
    model = config.model
    model.name = 'ddpm'
    model.scale_by_sigma = False
    model.num_scales = 1000
    model.ema_rate = 0.9999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 1, 2, 2, 4, 4)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True

    # optimization
    optim = config.optim
    optim.lr = 2e-5

    return config
