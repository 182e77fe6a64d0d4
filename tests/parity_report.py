"""Parity report: our outputs against the official PyTorch code's, as numbers (the tests assert
bounds; this prints the errors themselves, for README and release notes).

    python tests/parity_report.py          # ~3 min on a 2-core CPU

It lives with the tests because it reuses their helpers (the injected official draws, the official
PC-step replay). Tables (reference arrays in `tests/data/`, see `tests/reference.py`):

1. networks: max |ours - official| / max |official| of the raw output and the score, for the
   `model` and EMA weights of each converted official checkpoint;
2. losses: relative error of the official eval loss (same torch draws injected);
3. one PC step (corrector then predictor, the official noises) on the real network;
4. the probability-flow ODE sampler on Gaussian data (closed-form score): max error against the
   exact flow, ours and official (scipy RK45), and NFE of both, at rtol = atol = 1e-5 and 1e-3;
5. the likelihood: bits/dim against the official (same Hutchinson probe) and the exact value.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import convert, losses
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils

import reference as refcases

CASES = ["ncsnpp_ve_cont_small", "ddpmpp_vp_cont_small", "ddpmpp_subvp_cont_small",
         "ncsnv2_ve_small", "ddpm_vp_small"]


def rel(ours, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def network_loss_and_step_tables():
    from test_losses import _injected_noise

    print("networks and losses: max|ours - official| / max|official| (loss: relative error)")
    head = f"{'case':26s} {'model raw':>10s} {'model score':>11s} {'EMA raw':>10s} " \
           f"{'EMA score':>10s} {'loss':>9s} {'EMA loss':>9s} {'PC step':>9s}"
    print(head + "\n" + "-" * len(head))
    for case in CASES:
        config, arrays = refcases.case_config(case), refcases.case_arrays(case)
        state = convert.load_official_checkpoint(refcases.case_checkpoint(case), config)
        model = mutils.create_model(config)
        sde, _ = sde_lib.get_sde(config)
        continuous = config.training.continuous
        x, t = jnp.asarray(arrays["x"]), jnp.asarray(arrays["t"])

        @jax.jit
        def raw_and_score(params):
            variables = {"params": params}
            score = mutils.get_score_fn(sde, model, variables, continuous=continuous)(x, t)
            return model.apply(variables, x, jnp.asarray(arrays["labels"]), train=False), score

        row = []
        for weights, name in (("params", "model"), ("ema_params", "ema")):
            raw, score = raw_and_score(state[weights])
            row += [rel(raw, arrays[f"{name}_raw"]), rel(score, arrays[f"{name}_score"])]
        tc = config.training
        _, loss_fn = losses.get_loss_fn(sde, model, train=False, reduce_mean=tc.reduce_mean,
                                        continuous=continuous,
                                        likelihood_weighting=tc.likelihood_weighting)
        noise = _injected_noise(arrays)
        for weights, key in (("params", "loss_model"), ("ema_params", "loss_ema")):
            got = jax.jit(loss_fn)(state[weights], jnp.asarray(arrays["loss_batch"]),
                                   jax.random.PRNGKey(0), noise)
            row.append(rel(got, arrays[key]))
        row.append(pc_step_error(case, state["ema_params"]))
        cells = " ".join(f"{v:10.1e}" if v == v else f"{'-':>10s}" for v in row)
        print(f"{case:26s} {cells}")


def pc_step_error(case, params) -> float:
    from test_sampling import PC_STEP_KEYS, model_case_pc_step

    if "pc_step" not in refcases.case_meta(case):
        return float("nan")
    arrays = refcases.case_arrays(case)
    return max(rel(o, arrays[k]) for o, k in zip(model_case_pc_step(case, params), PC_STEP_KEYS))


def ode_and_likelihood_tables():
    from test_likelihood import official_bpd_runs
    from test_sampling import REFS, SDES, ode_sampler, ref, variables

    print("\nprobability-flow ODE sampler, Gaussian data (closed-form score), batch (4, 4, 4, 1):")
    head = f"{'SDE':9s} {'data':5s} {'tol':>6s} {'ours err':>9s} {'official err':>12s} " \
           f"{'ours NFE':>8s} {'official NFE':>12s}"
    print(head + "\n" + "-" * len(head))
    for name in SDES:
        for tol in (1e-5, 1e-3):
            for kind in ("iso", "diag"):
                prefix = f"ode.{name}.{kind}"
                x, nfe = ode_sampler(name, tol)(jax.random.key(0), variables(kind),
                                                jnp.asarray(ref(prefix + ".z")))
                exact = ref(prefix + ".exact_x_eps")
                official = ref(f"{prefix}.tol{tol:g}.x")
                err = np.abs(np.asarray(x, np.float64) - exact).max()
                print(f"{name:9s} {kind:5s} {tol:6.0e} {err:9.1e} "
                      f"{np.abs(official - exact).max():12.1e} {int(nfe):8d} "
                      f"{int(REFS[f'{prefix}.tol{tol:g}.nfe']):12d}")

    print("\nlikelihood (bits/dim), same data and Hutchinson probe as the official run, "
          "rtol = atol = 1e-5:")
    head = f"{'SDE':9s} {'data':5s} {'probe':10s} {'|ours - official|':>17s} " \
           f"{'|ours - exact|':>14s} {'ours NFE':>8s} {'official NFE':>12s}"
    print(head + "\n" + "-" * len(head))
    for name in SDES:
        for prefix, probe, bpd, _, nfe in official_bpd_runs(name):
            kind = prefix.split(".")[2]
            d_off = np.abs(np.asarray(bpd) - ref(f"{prefix}.{probe}.bpd")).max()
            # Gaussian probes estimate the trace: only the official run is comparable.
            d_exact = (f"{np.abs(np.asarray(bpd) - ref(prefix + '.exact_bpd')).max():14.1e}"
                       if probe == "Rademacher" else f"{'-':>14s}")
            print(f"{name:9s} {kind:5s} {probe:10s} {d_off:17.1e} {d_exact} {int(nfe):8d} "
                  f"{int(REFS[f'{prefix}.{probe}.nfe']):12d}")

if __name__ == "__main__":
    print(f"backend {jax.default_backend()}, jax {jax.__version__}\n")
    network_loss_and_step_tables()
    ode_and_likelihood_tables()
