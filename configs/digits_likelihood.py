"""The digits default (`configs/digits.py`) trained for likelihood: likelihood weighting with
importance-sampled t (Song, Durkan, Murray, Ermon 2021).

Run:
    python main.py --config configs/digits_likelihood.py --workdir workdir/digits_lik --mode train
    python main.py --config configs/digits_likelihood.py --workdir workdir/digits_lik \
        --mode likelihood --config.eval.bpd_num_repeats=5
    python main.py --config configs/digits_likelihood.py --workdir workdir/digits_lik \
        --mode train_dequantizer
    python main.py --config configs/digits_likelihood.py --workdir workdir/digits_lik \
        --mode likelihood --config.eval.dequantizer=variational

Same network, SDE (sub-VP), data and optimizer as the main job, twice its steps; the objective
differs: |score + z/std|^2 g(t)^2 (the weighting under which the loss bounds -log p), with t drawn
with density g^2/std^2 (uniform in log-SNR) so the weight per draw is the constant Z. Measured
numbers are in README.md ("Likelihood training on the digits").

Measured (seed 0, 4,000 steps, 2-core CPU shared with other jobs: 43 min wall, 873 CPU seconds of
training): test bits/dim 4.243 +- 0.021 (300 digits, 1 dequantization; main job 4.600), bound
4.214 +- 0.055; with the variational dequantizer (`--mode train_dequantizer`, 500 steps, then
`--config.eval.dequantizer=variational`): 4.199 +- 0.022. FID 23.76 +- 0.12, KID 0.00200 +- 0.00014
(main job 22.60 +- 0.18, 0.00120 +- 0.00027): 300 samples against the 300 test digits, mean +- s.e.
over `--config.seed=0..4` of
    python main.py --config configs/digits_likelihood.py --workdir workdir/digits_lik --mode eval \
        --config.eval.enable_loss=False --config.eval.enable_bpd=False --config.seed=S
    python benchmarks/fid_kid_seeds.py --config configs/digits_likelihood.py \
        --workdir workdir/digits_lik --step 4000
At the main job's 2,000 steps: 4.519 +- 0.021, FID 26.54, KID 0.0047 (seed 0).
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
