r"""NCSN++ (progressive growing, 7 resolutions) on 256x256 FFHQ, VE SDE, continuous-time
training, sigma_max 348, 2000 noise scales (LSUN defaults otherwise).

Reproduces: FFHQ 256x256 samples (qualitative only: no number in the paper; the official README
shows samples of the re-trained checkpoint `ve/ffhq_256_ncsnpp_continuous`).
PC sampler: reverse-diffusion predictor + Langevin corrector, snr 0.075.

Run (the data come from a TFRecord file you supply):
    python main.py --config configs/ve/ffhq_256_ncsnpp_continuous.py \
        --workdir workdir/ve_ffhq_256_ncsnpp_continuous --mode train \
        --config.data.tfrecords_path=/path/to/ffhq-r08.tfrecords

Official: configs/ve/ffhq_256_ncsnpp_continuous.py, with two changes:
* its docstring says "Church" (copy-paste slip); this is FFHQ;
* `data.tfrecords_path` was the author's own file ('/home/yangsong/ncsc/ffhq/ffhq-r08.tfrecords');
  here it is an empty `str` placeholder that you set on the command line.
"""
from ml_collections import config_dict

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
    data.dataset = 'FFHQ'
    data.image_size = 256
    data.tfrecords_path = config_dict.placeholder(str)  # official: the author's r08 file

    # model
    model = config.model
    model.name = 'ncsnpp'
    model.sigma_max = 348.
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
