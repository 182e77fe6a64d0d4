"""Class-conditional digits judged by an independent classifier (README's 10x10 table).

    python main.py --config configs/digits.py --workdir W --mode train             # main job
    python main.py --config configs/digits.py --workdir W --mode train_classifier
    python benchmarks/class_conditional_digits.py --workdir W [--per_class 100]

Draws `per_class` samples of every digit with the class-conditional PC sampler of the config
(Euler-Maruyama, N = model.num_scales steps, `classifier.scale`), plus as many unconditional ones
(the plain PC sampler, which the conditional one equals at scale 0), and labels them with
scikit-learn's SVC (RBF, gamma 0.001 on pixels 0..16, C 10) fitted on the 1,497 train digits
(pixels / 16 here, as the samples' [0, 1]). Prints the SVC's accuracy on the 300 test digits, the
table (row: requested digit, column: the SVC's label, in %), its diagonal and the unconditional
label histogram; writes W/samples/class_conditional.png (row d: ten samples of digit d).
"""
import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import digits as digits_config  # noqa: E402
from score_jax import checkpoints as ckpt_lib  # noqa: E402
from score_jax import controllable_generation as cg  # noqa: E402
from score_jax import (
    datasets,  # noqa: E402
    digits,  # noqa: E402
    sampling,  # noqa: E402
    utils,  # noqa: E402
)
from score_jax import sde as sde_lib  # noqa: E402
from score_jax.models import utils as mutils  # noqa: E402


def svc_judge():
    """(fitted SVC on the train digits, its test accuracy)."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    d = load_digits()
    x, y = d.images.reshape(len(d.images), -1) / 16.0, d.target
    idx = digits.split_indices()
    svc = SVC(gamma=0.001 * 256, C=10.0).fit(x[idx["train"]], y[idx["train"]])
    return svc, float(svc.score(x[idx["test"]], y[idx["test"]]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--per_class", type=int, default=100)
    p.add_argument("--scale", type=float, default=None, help="default: classifier.scale")
    p.add_argument("--num_scales", type=int, default=None, help="default: model.num_scales")
    p.add_argument("--skip_unconditional", action="store_true")
    args = p.parse_args()

    config = digits_config.get_config()
    if args.num_scales is not None:
        config.model.num_scales = args.num_scales
    scale = float(config.classifier.scale if args.scale is None else args.scale)
    svc, svc_acc = svc_judge()
    print(f"SVC test accuracy on the 300 test digits: {svc_acc:.4f}")

    sde, eps = sde_lib.get_sde(config)
    model, classifier = mutils.create_model(config), mutils.create_classifier(config)
    params, step = ckpt_lib.restore_for_sampling(args.workdir)
    cvars, cstep = ckpt_lib.restore_classifier(config, args.workdir)
    n = 10 * args.per_class
    shape = (n, 8, 8, 1)
    s = config.sampling
    build = lambda w: cg.get_pc_conditional_sampler(
        sde, model, classifier, shape, s.predictor, s.corrector,
        datasets.get_data_inverse_scaler(config), s.snr, n_steps=s.n_steps_each,
        continuous=True, eps=eps, scale=w)
    labels = jnp.repeat(jnp.arange(10), args.per_class)
    rng = jax.random.PRNGKey(0)
    start = time.perf_counter()
    guided = np.asarray(build(scale)(rng, {"params": params}, cvars, labels)[0])
    t_guided = time.perf_counter() - start
    print(f"score step {step}, classifier step {cstep}, scale {scale}, N {sde.N}; "
          f"{n} conditional samples in {t_guided:.0f} s")

    judged = svc.predict(np.clip(guided, 0, 1).reshape(n, -1))
    table = np.zeros((10, 10))
    for want, got in zip(np.asarray(labels), judged):
        table[want, got] += 1
    table = 100 * table / args.per_class
    print("requested | SVC label 0..9 (% of samples)")
    for d in range(10):
        print(f"{d:9d} | " + " ".join(f"{v:5.1f}" for v in table[d]))
    print(f"judged as requested: {np.trace(table) / 10:.1f}% (per digit min "
          f"{np.diag(table).min():.0f}%)")
    if not args.skip_unconditional:
        # Unconditional: the plain PC sampler (= the conditional one at scale 0, bit for bit).
        plain = np.asarray(sampling.get_pc_sampler(
            sde, model, shape, s.predictor, s.corrector, datasets.get_data_inverse_scaler(config),
            s.snr, n_steps=s.n_steps_each, continuous=True, eps=eps)(rng, {"params": params})[0])
        plain_judged = svc.predict(np.clip(plain, 0, 1).reshape(n, -1))
        hist = 100 * np.bincount(plain_judged, minlength=10) / n
        match = 100 * np.mean(plain_judged == np.asarray(labels))
        print("unconditional (scale 0) SVC labels %: " + " ".join(f"{v:.1f}" for v in hist)
              + f"; 'judged as requested' by chance: {match:.1f}%")
    # Row d of the grid: the first ten samples of digit d.
    grid = guided.reshape(10, args.per_class, 8, 8, 1)[:, :10].reshape(-1, 8, 8, 1)
    utils.save_samples(grid, str(pathlib.Path(args.workdir) / "samples" / "class_conditional"))


if __name__ == "__main__":
    main()
