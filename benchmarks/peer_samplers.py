"""Our few-step solvers against k-diffusion's samplers and diffusers' DPMSolverMultistepScheduler /
UniPCMultistepScheduler, on the same problems and the same latents: the closed-form mixtures of
`benchmarks/mixtures.py` (float64, exact score, dopri5 reference at 1e-9) and, with `--digits W`,
a trained score_jax model (float32; reference: dopri5 at `--digits_tol`).

    pip install --no-deps k-diffusion torchsde trampoline torchdiffeq   # + torch, diffusers
    python benchmarks/peer_samplers.py                          # VE, VP, sub-VP mixtures
    python benchmarks/peer_samplers.py --digits /work/runs/digits_copy --only_digits

Every sampler gets the same probability flow. k-diffusion works on x^ = x / alpha_t at noise
level sigma^ = sigma_t / alpha_t = exp(-lambda_t) with a denoiser D(x^, sigma^) (our data
prediction at the t of that sigma^); diffusers on the variance-preserving process with the same
log-SNR (alphas_cumprod = sigmoid(2 lambda) on a 1,000-point table of t in [eps, T], set in
float64 after construction, `final_sigmas_type='sigma_min'`), its model being our noise
prediction at the t of the scheduler's own sigma for that step (not its rounded integer
timestep, which is off by up to half a table interval). Every sampler ends at eps (no final
jump to sigma = 0), where the error is measured: relative RMS error to the reference (closed
form) or RMS in pixel units ([0, 1], digits; there every sampler ends with x0 = D(x, eps), peers
spending NFE - 1 on the flow).
Peers spend at most the NFE budget (2nd-order singlestep ones: NFE // 2 steps).

Ours: every solver x named grid, and fitted grids (`solvers.fit_time_grid`, fitted on other
latents than the ones measured) for DPM-Solver++(2M, 3M) and UniPC-2/3. The table gives per NFE
the best of each family and the ratio best peer / our best (> 1: ours more accurate).
k-diffusion is imported as `k_diffusion.sampling` alone: its package `__init__` imports training
code (scikit-image, torchvision), so the package is registered without running it and
`k_diffusion.utils` (which `sampling` uses for `append_dims` only) is given that one function.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import pathlib
import sys
import time
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from score_jax import sde as sde_lib  # noqa: E402
from score_jax import solvers

NFES = (5, 10, 20)


def import_k_diffusion_sampling():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        raise SystemExit("k-diffusion is missing: pip install --no-deps k-diffusion torchsde "
                         "trampoline torchdiffeq")
    import torch

    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules.setdefault("k_diffusion", pkg)
    sys.modules.setdefault("k_diffusion.utils", utils)
    import k_diffusion.sampling as ks  # noqa: E402

    del torch
    return ks


class Flow:
    """A probability-flow problem on the host: `denoise(x, t) -> D` in numpy (x in our SDE's
    space), latents z at T, reference at eps, the SDE's schedule in float64, and `error(y)`."""

    def __init__(self, sde, eps, z, ref, data_fn, error):
        self.sde, self.eps, self.z, self.ref = sde, eps, np.asarray(z), np.asarray(ref)
        self.data_fn, self.error = data_fn, error
        self.sch = solvers._Schedule(sde)
        self.lam_T, self.lam_eps = self.sch.lam(np.array([sde.T, eps]))

    def t_of_sigma_hat(self, s):
        lam = np.clip(-np.log(np.asarray(s, np.float64)), self.lam_T, self.lam_eps)
        return self.sch.t(lam)


# ---------------------------------------------------------------- k-diffusion


def k_sigmas(ks, flow, kind, n):
    """n + 1 noise levels sigma^ from sigma^(T) down to sigma^(eps) (no trailing zero)."""
    import torch

    s_max, s_min = math.exp(-flow.lam_T), math.exp(-flow.lam_eps)
    if kind == "karras":
        s = ks.get_sigmas_karras(n + 1, s_min, s_max, rho=7.0)
    else:  # 'logsnr': exponential in sigma^ = uniform in lambda
        s = ks.get_sigmas_exponential(n + 1, s_min, s_max)
    return s[:-1].to(torch.float64)


K_SAMPLERS = {  # name -> (evaluations per step, call)
    "euler": (1, lambda ks, m, x, s: ks.sample_euler(m, x, s, disable=True)),
    "heun": (2, lambda ks, m, x, s: ks.sample_heun(m, x, s, disable=True)),
    "dpm_2": (2, lambda ks, m, x, s: ks.sample_dpm_2(m, x, s, disable=True)),
    "lms": (1, lambda ks, m, x, s: ks.sample_lms(m, x, s, disable=True)),
    "dpmpp_2m": (1, lambda ks, m, x, s: ks.sample_dpmpp_2m(m, x, s, disable=True)),
    "dpmpp_2m_sde(eta=0)": (1, lambda ks, m, x, s: ks.sample_dpmpp_2m_sde(
        m, x, s, eta=0.0, disable=True, noise_sampler=lambda a, b: 0 * x)),
    "dpmpp_3m_sde(eta=0)": (1, lambda ks, m, x, s: ks.sample_dpmpp_3m_sde(
        m, x, s, eta=0.0, disable=True, noise_sampler=lambda a, b: 0 * x)),
}


def k_diffusion_runs(ks, flow, nfe):
    """{label: (y at eps in our space, nfe used)} of every k-diffusion sampler and grid."""
    import torch

    count = [0]
    alpha_T, alpha_eps = flow.sch.alpha(np.array([flow.sde.T, flow.eps]))

    def model(x_hat, sigma_hat):
        count[0] += 1
        t = flow.t_of_sigma_hat(float(sigma_hat.reshape(-1)[0]))
        a = float(flow.sch.alpha(t))
        d = flow.data_fn(a * x_hat.numpy(), float(t))
        return torch.from_numpy(np.asarray(d, np.float64)).to(x_hat.dtype)

    out = {}
    x_T = torch.from_numpy(flow.z / alpha_T)
    for (name, (per_step, call)), kind in itertools.product(K_SAMPLERS.items(),
                                                            ("karras", "logsnr")):
        steps = nfe // per_step
        if steps < 1:
            continue
        count[0] = 0
        y = call(ks, model, x_T.clone(), k_sigmas(ks, flow, kind, steps))
        out[f"k:{name}|{kind}"] = (alpha_eps * y.numpy(), count[0])
    count[0] = 0
    y = ks.sample_dpm_fast(model, x_T.clone(), math.exp(-flow.lam_eps), math.exp(-flow.lam_T),
                           nfe, disable=True)
    out["k:dpm_fast"] = (alpha_eps * y.numpy(), count[0])
    return out


# ---------------------------------------------------------------- diffusers


D_TABLE = 1000


def diffusers_runs(flow, nfe):
    """{label: (y at eps, nfe)} of DPMSolverMultistep (2M, 3M) and UniPC (bh1/bh2, order 2/3) on
    the uniform-t ('linspace'), Karras and log-SNR ('lu_lambdas' / exponential) grids."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    ts = flow.eps + (flow.sde.T - flow.eps) * np.arange(D_TABLE) / (D_TABLE - 1)
    abar = 1.0 / (1.0 + np.exp(-2.0 * flow.sch.lam(ts)))
    betas = np.clip(1.0 - abar / np.concatenate([[1.0], abar[:-1]]), 1e-12, 1.0)
    alpha = lambda t: float(flow.sch.alpha(t))  # noqa: E731
    out = {}
    configs = []
    for order, grid in itertools.product((2, 3), ("linspace", "karras", "logsnr")):
        kw = {"use_karras_sigmas": grid == "karras"}
        configs.append((f"d:dpmsolver++({order}M)|{grid}", DPMSolverMultistepScheduler,
                        dict(solver_order=order, algorithm_type="dpmsolver++",
                             use_lu_lambdas=grid == "logsnr", **kw)))
        for variant in ("bh1", "bh2"):
            configs.append((f"d:unipc-{order}-{variant}|{grid}", UniPCMultistepScheduler,
                            dict(solver_order=order, solver_type=variant,
                                 use_exponential_sigmas=grid == "logsnr", **kw)))
    for label, cls, kw in configs:
        sched = cls(num_train_timesteps=D_TABLE, trained_betas=betas.astype(np.float32),
                    prediction_type="epsilon", final_sigmas_type="sigma_min", **kw)
        # The table in float64: in float32, alphas_cumprod rounds to 1 beyond lambda ~ 8 (sub-VP
        # ends at 9.2), where its sigma would be 0.
        lam = torch.from_numpy(flow.sch.lam(ts))
        sched.alphas_cumprod = torch.sigmoid(2 * lam)
        sched.alpha_t, sched.sigma_t = torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()
        sched.lambda_t, sched.sigmas = lam, torch.exp(-lam)
        sched.set_timesteps(nfe)
        sigmas = sched.sigmas.double().numpy()  # sigma^ of the VP process: e^-lambda
        s0 = sigmas[0]
        a0_vp = 1.0 / math.sqrt(1.0 + s0**2)
        x = torch.from_numpy(flow.z * a0_vp / alpha(flow.sde.T))
        if not np.isclose(-np.log(s0), flow.lam_T, atol=1e-2):
            raise AssertionError(f"{label}: the scheduler starts at lambda={-np.log(s0)}, "
                                 f"not lambda(T)={flow.lam_T}")
        n_eval = 0
        for i, step_t in enumerate(sched.timesteps):
            s = sigmas[i]
            t = float(flow.t_of_sigma_hat(s))
            a_vp, s_vp = 1.0 / math.sqrt(1.0 + s**2), s / math.sqrt(1.0 + s**2)
            x_np = x.numpy()
            d = np.asarray(flow.data_fn(alpha(t) / a_vp * x_np, t), np.float64)
            noise = (x_np - a_vp * d) / s_vp
            n_eval += 1
            x = sched.step(torch.from_numpy(noise), step_t, x).prev_sample
        s_end = sigmas[len(sched.timesteps)]
        a_end = 1.0 / math.sqrt(1.0 + s_end**2)
        if not np.isclose(-np.log(s_end), flow.lam_eps, atol=1e-2):
            raise AssertionError(f"{label}: the scheduler ends at lambda={-np.log(s_end)}, "
                                 f"not lambda(eps)={flow.lam_eps}")
        out[label] = (alpha(flow.eps) / a_end * x.double().numpy(), n_eval)
    return out


# ---------------------------------------------------------------- ours


OURS = [("ddim", {}), ("dpm_solver", {"order": 2}), ("dpm_solver", {"order": 3}),
        ("dpm_solver++", {"order": 2}), ("dpm_solver++", {"order": 3}),
        ("unipc", {"order": 2, "variant": "bh1"}), ("unipc", {"order": 3, "variant": "bh2"}),
        ("unipc", {"order": 3, "variant": "bh1"}), ("edm_heun", {})]
FITTED = [("dpm_solver++", {"order": 2}), ("dpm_solver++", {"order": 3}),
          ("unipc", {"order": 2, "variant": "bh1"}), ("unipc", {"order": 3, "variant": "bh2"})]


def our_runs(sde, score_fn, z, eps, nfe, z_fit=None, ref_fit=None, denoise=False, ours=None,
             grid_files=()):
    """{label: (y, nfe)}: every solver of `ours` (default OURS) x named grid, fitted grids when
    z_fit is given, and the grids of `grid_files` ((method, kw, path), read as --mode sample
    reads them)."""
    from score_jax import sampling

    out = {}
    for (method, kw), path in grid_files:
        try:
            grid = sampling.read_grid_file(path, sde, method, nfe, eps, denoise=denoise, **kw)
        except ValueError:
            continue
        run = solvers.grid_runner(sde, score_fn, method, nfe, eps, denoise=denoise, **kw)
        label = method + "".join(f"-{v}" for v in kw.values())
        out[f"{label}|fitted"] = (np.asarray(run(jnp.asarray(z), grid)), nfe)
    for (method, kw), grid in itertools.product(ours or OURS, solvers.TIME_GRIDS):
        try:
            run = solvers.grid_runner(sde, score_fn, method, nfe, eps, denoise=denoise, **kw)
            tab = solvers.table(sde, method, nfe, eps, time_grid_kind=grid, denoise=denoise, **kw)
        except ValueError:
            continue
        label = method + "".join(f"-{v}" for v in kw.values())
        out[f"{label}|{grid}"] = (np.asarray(run(jnp.asarray(z), grid)), len(tab.t))
    if z_fit is not None:
        for method, kw in FITTED:
            if nfe < kw.get("order", 1) + 1:
                continue
            grid = solvers.fit_time_grid(sde, score_fn, method, nfe, eps, jnp.asarray(z_fit),
                                         reference=ref_fit, denoise=denoise, **kw)
            run = solvers.grid_runner(sde, score_fn, method, nfe, eps, denoise=denoise, **kw)
            label = method + "".join(f"-{v}" for v in kw.values())
            out[f"{label}|fitted"] = (np.asarray(run(jnp.asarray(z), grid)), nfe)
    return out


def summarize(name, nfe, runs, error):
    errs = {k: error(y) for k, (y, n) in runs.items() if n <= nfe}
    fams = {"ours": {k: v for k, v in errs.items() if not k.startswith(("k:", "d:"))}}
    fams["ours (named grids)"] = {k: v for k, v in fams["ours"].items()
                                  if not k.endswith("fitted")}
    fams["k-diffusion"] = {k: v for k, v in errs.items() if k.startswith("k:")}
    fams["diffusers"] = {k: v for k, v in errs.items() if k.startswith("d:")}
    best = {f: min(v.items(), key=lambda kv: kv[1]) for f, v in fams.items() if v}
    peer = min((best[f] for f in ("k-diffusion", "diffusers") if f in best),
               key=lambda kv: kv[1])
    row = {"problem": name, "nfe": nfe, **{f"best {f}": list(b) for f, b in best.items()},
           "ratio": peer[1] / best["ours"][1],
           "ratio_named": peer[1] / best["ours (named grids)"][1],
           "errors": errs}
    print(f"| {name} | {nfe} | {best['ours'][1]:.3g} ({best['ours'][0]}) | "
          f"{best['ours (named grids)'][1]:.3g} | "
          f"{best['k-diffusion'][1]:.3g} ({best['k-diffusion'][0][2:]}) | "
          f"{best['diffusers'][1]:.3g} ({best['diffusers'][0][2:]}) | {row['ratio']:.2f} |",
          flush=True)
    return row


HEADER = ("| problem | NFE | ours, best (setting) | ours, named grids | k-diffusion, best | "
          "diffusers, best | best peer / ours |\n|---|---:|---|---:|---|---|---:|")


def closed_form(args, ks):
    from mixtures import problem

    rows = []
    print(HEADER)
    for sde_name, data in itertools.product(("ve", "vp", "subvp"), args.data):
        with jax.enable_x64(True):
            prob = problem(sde_name, data, seed=args.seed, n=args.n)
            fit = problem(sde_name, data, seed=args.seed, n=args.n_fit, latent_seed=1)
            score = prob.score
            data_fn = jax.jit(lambda x, t: solvers.prediction_fn(prob.sde, score, "data")(x, t))
            flow = Flow(prob.sde, prob.eps, prob.z, prob.ref,
                        lambda x, t: np.asarray(data_fn(jnp.asarray(x), t)), prob.error)
            for nfe in args.nfe:
                runs = our_runs(prob.sde, score, prob.z, prob.eps, nfe, fit.z, fit.ref)
                runs.update(k_diffusion_runs(ks, flow, nfe))
                runs.update(diffusers_runs(flow, nfe))
                rows.append(summarize(f"{sde_name} {data}", nfe, runs, prob.error))
    return rows


def digits(args, ks):
    """The trained model of `args.digits` (its config.json): float32 score from the EMA weights,
    `--digits_n` latents, reference dopri5 at args.digits_tol, then x0 = D(x, eps) as the
    config's `noise_removal`: every sampler ends with that one evaluation (peers get NFE - 1 for
    the flow). Ours: DDIM, 2M, 3M, UniPC-3 on the named grids and the workdir's fitted grids
    (W/grids/*.json of --mode fit_grid)."""
    import ml_collections

    from score_jax import checkpoints as ckpt_lib
    from score_jax import datasets
    from score_jax.models import utils as mutils

    config = ml_collections.ConfigDict(json.load(open(os.path.join(args.digits, "config.json"))))
    sde, eps = sde_lib.get_sde(config)
    model = mutils.create_model(config)
    params, step = ckpt_lib.restore_for_sampling(args.digits)
    net = mutils.get_score_fn(sde, model, {"params": params}, train=False, continuous=True)
    score = lambda x, t: net(x, t).astype(x.dtype)  # noqa: E731
    shape = (args.digits_n, config.data.image_size, config.data.image_size,
             config.data.num_channels)
    key = jax.random.PRNGKey(1234)
    z = sde.prior_sampling(jax.random.fold_in(key, 0), shape)
    z_fit = sde.prior_sampling(jax.random.fold_in(key, 1), shape)
    start = time.time()
    ref = np.asarray(solvers.reference_flow(sde, score, z, eps, tol=args.digits_tol,
                                            denoise=True))
    ref_fit = (solvers.reference_flow(sde, score, z_fit, eps, tol=args.digits_tol,
                                      denoise=True) if args.digits_fit else None)
    print(f"digits step {step}: references in {time.time() - start:.0f} s", file=sys.stderr)
    scaler = datasets.get_data_inverse_scaler(config)

    def error(y):
        return float(np.sqrt(np.mean((np.asarray(scaler(np.asarray(y))) - scaler(ref)) ** 2)))

    data_fn = jax.jit(lambda x, t: solvers.prediction_fn(sde, score, "data")(x, t))
    host_data_fn = lambda x, t: np.asarray(data_fn(jnp.asarray(x, jnp.float32), t),  # noqa: E731
                                           np.float64)
    flow = Flow(sde, eps, np.asarray(z, np.float64), ref, host_data_fn, error)

    def denoised(runs):  # the final x0 = D(x, eps), one evaluation more
        return {k: (host_data_fn(y, eps), n + 1) for k, (y, n) in runs.items()}

    ours = [("ddim", {}), ("dpm_solver++", {"order": 2}), ("dpm_solver++", {"order": 3}),
            ("unipc", {"order": 3, "variant": "bh2"})]
    files = [((m, kw), os.path.join(args.digits, "grids", f"{m}_{{}}.json"))
             for m, kw in [("dpm_solver++", {"order": 2}), ("unipc", {"order": 3,
                                                                      "variant": "bh2"})]]
    rows = []
    print(HEADER)
    for nfe in args.nfe:
        fit = (z_fit, ref_fit) if args.digits_fit else (None, None)
        runs = our_runs(sde, score, z, eps, nfe, *fit, denoise=True, ours=ours,
                        grid_files=[(mk, path.format(nfe)) for mk, path in files])
        runs.update(denoised(k_diffusion_runs(ks, flow, nfe - 1)))
        runs.update(denoised(diffusers_runs(flow, nfe - 1)))
        rows.append(summarize(f"digits (step {step})", nfe, runs, error))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    parser.add_argument("--data", nargs="+", default=["wide", "narrow"])
    parser.add_argument("--n", type=int, default=256, help="latents measured")
    parser.add_argument("--n_fit", type=int, default=128, help="other latents, to fit grids on")
    parser.add_argument("--seed", type=int, default=0, help="mixture draw")
    parser.add_argument("--digits", default="", help="workdir of a trained digits model")
    parser.add_argument("--only_digits", action="store_true")
    parser.add_argument("--digits_n", type=int, default=64)
    parser.add_argument("--digits_tol", type=float, default=1e-5)
    parser.add_argument("--digits_fit", action="store_true",
                        help="also fit grids on the digits model (minutes per grid on a CPU)")
    parser.add_argument("--out", default="", help="rows as JSON")
    args = parser.parse_args()
    ks = import_k_diffusion_sampling()
    rows = [] if args.only_digits else closed_form(args, ks)
    if args.digits:
        rows += digits(args, ks)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
