"""The digits default (`configs/digits.py`) trained for likelihood: likelihood weighting with
importance-sampled t (Song, Durkan, Murray, Ermon 2021).

Run:
    python main.py --config configs/digits_likelihood.py --workdir workdir/digits_lik --mode train
    python main.py --config configs/digits_likelihood.py --workdir workdir/digits_lik \
        --mode likelihood --config.eval.bpd_num_repeats=5

Same network, SDE (sub-VP), data, optimizer and step count as the main job; only the objective
differs: |score + z/std|^2 g(t)^2 (the weighting under which the loss bounds -log p), with t drawn
with density g^2/std^2 (uniform in log-SNR) so the weight per draw is the constant Z. Measured
numbers are in README.md ("Likelihood training on the digits").
"""
from configs import digits


def get_config():
    config = digits.get_config()
    training = config.training
    training.likelihood_weighting = True
    training.importance_weighting = True
    # Twice the main job's steps: ~8 min on the idle 2-core CPU, inside the 15 min budget.
    training.n_iters = 4000
    training.snapshot_freq = 4000
    training.snapshot_freq_for_preemption = 1000
    return config
