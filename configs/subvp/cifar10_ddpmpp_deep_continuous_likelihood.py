"""ScoreFlow on CIFAR-10: DDPM++ deep, sub-VP SDE, trained with likelihood weighting and
importance-sampled t (Song, Durkan, Murray, Ermon, "Maximum Likelihood Training of Score-Based
Diffusion Models", NeurIPS 2021; code yang-song/score_flow, whose configs are the score_sde ones
with `--config.training.likelihood_weighting --config.training.importance_weighting`).

Published: the paper's best CIFAR-10 NLL is 2.83 bits/dim without data augmentation (abstract of
the NeurIPS version; an earlier arXiv version said 2.74), reached with likelihood weighting,
importance sampling and a variational dequantizer (our `eval.dequantizer='variational'` is a much
smaller flow than their Flow++ one); the issue quotes 3.16 -> 2.83 for VP. The per-row numbers of
the paper's table were not checked here, and this config has not been trained here (a GPU job).

Run:
    python main.py --config configs/subvp/cifar10_ddpmpp_deep_continuous_likelihood.py \
        --workdir workdir/subvp_cifar10_likelihood --mode train
    python main.py --config configs/subvp/cifar10_ddpmpp_deep_continuous_likelihood.py \
        --workdir workdir/subvp_cifar10_likelihood --mode likelihood

Differs from `configs/subvp/cifar10_ddpmpp_deep_continuous.py` only in the objective and, as
score_flow's best models, in training without horizontal flips.
"""
import ml_collections

from configs.subvp import cifar10_ddpmpp_deep_continuous


def get_config():
    config = cifar10_ddpmpp_deep_continuous.get_config()
    config.training.likelihood_weighting = True
    config.training.importance_weighting = True
    config.data.random_flip = False
    config.eval.enable_bpd = True
    config.deq = ml_collections.ConfigDict(
        {"nf": 64, "num_layers": 4, "n_iters": 100_000, "batch_size": 128, "lr": 1e-3,
         "ema_rate": 0.999, "log_freq": 100,
         "snapshot_freq": 5000})
    return config
