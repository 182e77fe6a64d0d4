"""Defaults shared by every CIFAR-10 experiment (32x32, batch 128, 1.3M steps).

Mirrors `configs/default_cifar10_configs.py` of the official code (yang-song/score_sde and
score_sde_pytorch: same keys and values) with these changes:

* no `import torch` and no `config.device`: our code is JAX and never reads a device;
* `training.n_jitted_steps = 5` as in the official JAX tree (the PyTorch tree lacks the key);
* score_jax's own keys (few-step samplers, `sweep`, FID/KID, `model.dtype`, `data.data_dir`,
  ...) are added by `configs/__init__.py`, the same for every dataset;
* real-valued hyper-parameters are written as floats (`sigma_max = 50.`, `weight_decay = 0.`)
  so that a command-line override with a decimal value (`--config.model.sigma_max=50.5`)
  type-checks; ml_collections refuses to put a float into a field that holds an int.

Not an experiment by itself (no `training.sde`, no `model.name`): experiment configs call
`get_default_configs()` and fill in the rest.
"""
import ml_collections

from configs import add_score_jax_keys


def get_default_configs():
    config = ml_collections.ConfigDict()

    # training
    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.n_iters = 1300001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 10000  # extra checkpoints against pre-emption
    training.snapshot_sampling = True  # draw samples at every snapshot
    training.likelihood_weighting = False
    training.importance_weighting = False  # t ~ g^2/std^2 (needs likelihood_weighting)
    training.continuous = True
    training.n_jitted_steps = 5  # official JAX default; log_freq must be a multiple of it
    training.reduce_mean = False

    # sampling
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16

    # evaluation
    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.begin_ckpt = 9
    evaluate.end_ckpt = 26
    evaluate.batch_size = 1024
    evaluate.enable_sampling = False
    evaluate.num_samples = 50000
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = 'test'
    evaluate.dequantizer = 'uniform'  # or 'variational' (--mode train_dequantizer first)
    evaluate.bound_num_t = 16  # t per example of the variational bound (0: not computed)
    evaluate.bpd_num_repeats = 5  # passes over the test set (official run_lib; 1 for train)

    # data
    config.data = data = ml_collections.ConfigDict()
    data.dataset = 'CIFAR10'
    data.image_size = 32
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 3

    # model
    config.model = model = ml_collections.ConfigDict()
    model.sigma_min = 0.01
    model.sigma_max = 50.
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.
    model.dropout = 0.1
    model.embedding_type = 'fourier'

    # optimization
    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0.
    optim.optimizer = 'Adam'
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.

    config.seed = 42

    return add_score_jax_keys(config)
