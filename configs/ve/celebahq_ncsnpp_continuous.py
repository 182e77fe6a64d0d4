r"""NCSN++ (8 resolutions, nf 16) on 1024x1024 CelebA-HQ, VE SDE, continuous-time training.

Reproduces: the paper's 1024x1024 CelebA-HQ samples, the first 1024px images from a score-based
model (qualitative only: no number in the paper). Batch 8, 2.4M steps, sigma_max 1348, 2000 noise
scales, EMA 0.9999; PC sampler: reverse-diffusion predictor + Langevin corrector, snr 0.15.
The official CelebA-HQ checkpoints were not released (see the official README).

Run (the data come from a TFRecord file you supply):
    python main.py --config configs/ve/celebahq_ncsnpp_continuous.py \
        --workdir workdir/ve_celebahq_ncsnpp_continuous --mode train \
        --config.data.tfrecords_path=/path/to/celebahq-r10.tfrecords

Official: configs/ve/celebahq_ncsnpp_continuous.py, a stand-alone config (it does not start from
a defaults file), with these changes:
* no `import torch` / `config.device` (the PyTorch tree computed a torch device here; our code is
  JAX and never reads a device);
* `training.n_jitted_steps = 1`, the value of the official JAX CelebA-HQ-1024 config (the PyTorch
  tree lacks the key);
* the library reads `eval.enable_sampling`, `eval.enable_loss`, `eval.enable_bpd` and
  `eval.bpd_dataset`, which this config lacked (the official evaluation would stop with an
  AttributeError): added with the values of the 256px (LSUN) defaults;
* `data.data_dir` added (as in every defaults file) so all configs have the same data keys;
* `data.tfrecords_path` was the author's own file ('/atlas/u/yangsong/celeba_hq/-r10.tfrecords');
  here it is an empty `str` placeholder that you set on the command line;
* real-valued hyper-parameters are floats (`sigma_max = 1348.`, `weight_decay = 0.`).
Kept as in the official config: `optim.amsgrad = False` (not read by our Adam).
"""
import ml_collections
from ml_collections import config_dict


def get_config():
    config = ml_collections.ConfigDict()

    # training
    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 8
    training.n_iters = 2400001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 5000
    training.snapshot_sampling = True
    training.sde = 'vesde'
    training.continuous = True
    training.likelihood_weighting = False
    training.n_jitted_steps = 1  # official JAX value for this config
    training.reduce_mean = False
    training.skip_nonfinite = False  # ours: skip a non-finite update instead of stopping

    # sampling
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = 'pc'
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'langevin'
    sampling.probability_flow = False
    sampling.snr = 0.15
    sampling.n_steps_each = 1
    sampling.noise_removal = True

    # evaluation
    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.batch_size = 1024
    evaluate.num_samples = 50000
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 96
    evaluate.enable_sampling = True  # added (missing in the official config)
    evaluate.enable_loss = True  # added
    evaluate.enable_bpd = False  # added
    evaluate.bpd_dataset = 'test'  # added
    evaluate.bpd_num_repeats = 5  # passes over the test set (official run_lib; 1 for train)

    # data
    config.data = data = ml_collections.ConfigDict()
    data.dataset = 'CelebAHQ'
    data.image_size = 1024
    data.centered = False
    data.random_flip = True
    data.uniform_dequantization = False
    data.num_channels = 3
    data.tfrecords_path = config_dict.placeholder(str)  # official: the author's r10 file
    data.data_dir = config_dict.placeholder(str)  # ours: optional TFDS data_dir

    # model
    config.model = model = ml_collections.ConfigDict()
    model.name = 'ncsnpp'
    model.scale_by_sigma = True
    model.sigma_max = 1348.
    model.num_scales = 2000
    model.ema_rate = 0.9999
    model.sigma_min = 0.01
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 16
    model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
    model.num_res_blocks = 1
    model.attn_resolutions = (16,)
    model.dropout = 0.
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
    model.embedding_type = 'fourier'

    # optimization
    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0.
    optim.optimizer = 'Adam'
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.

    config.seed = 42
    config.allow_config_change = False  # ours: resume/sample with a changed model or SDE

    return config
