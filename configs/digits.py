"""The embedded default: a small DDPM++ on scikit-learn's 8x8 digits, sub-VP SDE, continuous time.

Trains on a laptop CPU (2 cores) in about ten minutes and needs no download (the 1,797 digits ship
with scikit-learn; `score_jax.digits` makes them a tfds dataset, 1,497 train / 300 test images).

Run (the README's main job; it ends by reporting test bits/dim, FID and KID,
`training.final_eval`):
    python main.py --config configs/digits.py --workdir workdir/digits --mode train
    # the bits/dim with the official 5 dequantizations of the test split:
    python main.py --config configs/digits.py --workdir workdir/digits --mode likelihood \
        --config.eval.bpd_num_repeats=5

Reaches (seed 0, 2,000 steps of batch 128, 2-core CPU): training loss ~0.13, eval loss ~0.14;
samples that are recognisable digits (`W/samples/iter_2000.png`, Euler-Maruyama, 1,000 steps);
test bits/dim 4.596 +- 0.010 (probability-flow ODE, 300 test digits x 5 dequantizations, mean
NFE 426), against 8 for a uniform model and 6.97 +- 0.02 for a per-pixel Gaussian fitted to the
dequantized train split (same [-1, 1] scaling and +7 offset as our bits/dim;
`python benchmarks/digits_baselines.py`); FID 22.09 and KID 0.0013 of 300 samples against the 300
test digits, against 20.87 / -0.0001 for 300 train digits and 71.69 / 0.0667 for the Gaussian's
samples (`python benchmarks/digits_baselines.py --fid`). Times in README.md.

Choices: DDPM++ (`ncsnpp` without FIR / progressive paths, positional time embedding) with two
resolutions (8, 4), attention at 4x4; sub-VP because it gives the best likelihoods in the paper;
uniform dequantization in training so the model's density is that of the dequantized data whose
bits/dim we report; lr 1e-3 with a short warm-up and EMA 0.995 because the run is short (2,000
steps); one snapshot (with its sample grid) at the end and one dequantization of the test split in
the final evaluation, to stay near ten minutes.
"""
import ml_collections

from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()

    training = config.training
    training.sde = 'subvpsde'
    training.continuous = True
    training.reduce_mean = True
    training.batch_size = 128
    training.n_iters = 2000
    training.n_jitted_steps = 1  # XLA:CPU: fusing steps costs compile time, gains nothing
    training.log_freq = 50
    training.eval_freq = 250
    training.snapshot_freq = 2000
    training.snapshot_freq_for_preemption = 500
    training.snapshot_sampling = True
    training.final_eval = True  # ends the run with --mode eval (loss and test bits/dim)

    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'euler_maruyama'
    sampling.corrector = 'none'
    # --config.sampling.class_label=3: --mode sample draws 3s (needs --mode train_classifier).
    sampling.class_label = ml_collections.config_dict.placeholder(int)

    evaluate = config.eval
    evaluate.begin_ckpt = evaluate.end_ckpt = 1  # the snapshot at step 2,000
    evaluate.batch_size = 100
    evaluate.num_samples = 300
    evaluate.enable_bpd = True
    evaluate.bpd_num_repeats = 1  # official: 5 (--config.eval.bpd_num_repeats=5)
    evaluate.enable_sampling = True  # FID and KID against the 300 test digits
    evaluate.fid_stats_split = 'test'

    data = config.data
    data.dataset = 'DIGITS'
    data.image_size = 8
    data.num_channels = 1
    data.centered = True
    data.random_flip = False
    data.uniform_dequantization = True

    model = config.model
    model.name = 'ncsnpp'
    model.scale_by_sigma = False
    model.ema_rate = 0.995
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 16
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (4,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = False
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'none'
    model.progressive_input = 'none'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.embedding_type = 'positional'
    model.fourier_scale = 16.
    model.conv_size = 3
    model.dropout = 0.1
    model.dtype = 'float32'  # or 'bfloat16' (README: bits/dim within 0.05 of float32)

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 100
    optim.grad_clip = 1.

    # The noise-conditional classifier (`--mode train_classifier`, `sampling.class_label`).
    config.classifier = classifier = ml_collections.ConfigDict()
    classifier.name = 'wideresnet_noise_conditional'
    classifier.blocks_per_group = 1  # WRN-10-2
    classifier.channel_multiplier = 2
    classifier.num_classes = 10
    # Weight of grad log p(y | x, t) in the conditional score. The official default, 1, gives
    # the requested digit 83% of the time here; 3 gives 97% (README, Class-conditional sampling).
    classifier.scale = 3.0
    classifier.batch_size = 128
    classifier.n_iters = 600
    classifier.lr = 1e-3
    classifier.warmup = 50
    classifier.ema_rate = 0.99
    classifier.log_freq = 50
    classifier.eval_freq = 100
    classifier.snapshot_freq = 600
    classifier.snapshot_freq_for_preemption = 200

    # The variational dequantizer q(u|x) (`--mode train_dequantizer`, `eval.dequantizer`).
    config.deq = deq = ml_collections.ConfigDict()
    deq.nf = 32
    deq.num_layers = 2  # affine couplings after the conditional Gaussian
    deq.n_iters = 500
    deq.batch_size = 128
    deq.lr = 1e-3
    deq.ema_rate = 0.99
    deq.log_freq = 50
    deq.snapshot_freq = 100  # checkpoints of its training, to resume after a kill

    config.seed = 0
    return config
