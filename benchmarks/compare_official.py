"""score_jax against the official PyTorch code on the same CPU, weights and inputs.

    python benchmarks/compare_official.py --official /path/to/score_sde_pytorch
    python benchmarks/compare_official.py --official OFFICIAL \
        --config configs/vp/cifar10_ddpmpp_continuous.py --nf 32 --batch 64 --only conv,forward
    python benchmarks/compare_official.py --official OFFICIAL --case ncsnpp_ve_cont_small
    python benchmarks/compare_official.py --official OFFICIAL --train_steps 800 \
        --save_checkpoint trained.pth --only ode     # then --checkpoint trained.pth

`--official` is a checkout of `yang-song/score_sde_pytorch` (not a dependency of score_jax). The
network is either a reference case (`--case`: its official checkpoint in `tests/data/` and its
config) or a config file (`--config`, with `--nf` / `--image_size` shrinking it): then the official
network gets random weights (seed 0, every parameter perturbed so no layer is zero), or an official
checkpoint's (`--checkpoint`), or is first trained by the official code (`--train_steps` on
upscaled digits, saved with `--save_checkpoint`); the weights are saved as an official checkpoint
and converted with `score_jax.convert.load_official_checkpoint`, exactly as a user converts a
released one. Both sides get the same inputs; the script first prints how far apart their network
outputs are.

Rows (`--only` picks some): `conv` (one 3x3 convolution, `--nf` * 2 channels in and out, at the
network's image size: jitted NHWC `lax.conv_general_dilated` against `F.conv2d` on NCHW), `forward`
(one network call, eval mode), `train` (one training step of the config: loss with its random t and
noise, backward, Adam with the config's warm-up and clipping, EMA; official `losses.get_step_fn`
against `train.get_train_fns`), `ode` (probability-flow sampler from the same latent at each of
`--ode_tols`: official scipy RK45, ours diffrax Dopri5; the error columns are each sample's RMS
distance to a tight solution, ours at `--ode_reference_tol`; then, at equal accuracy, the cheapest
of our samplers in `--match` whose error is at most the official's, timed against it), `bpd`
(likelihood at each of `--bpd_tols`, same data (`--bpd_data`) and Hutchinson probe; the error
columns hold each side's mean bits/dim, or with `--bpd_reference_tol` each side's RMS distance to
our tight solve with the same probe, and ours at tighter tolerances when it is farther than the
official), `pc` (reverse diffusion + Langevin with `--pc_N` noise levels). `--ode_variable` is the
variable of our probability-flow ODE in the `ode` and `bpd` rows (`ode.probability_flow`; the tight
references stay in t).
Every timing interleaves the two implementations, `--repeats` times, and reports medians (each
call after a 50 ms pause, see QUIET_S); our compile time is reported separately (first call minus
the median). JAX runs on the CPU with its default thread pool, torch with
`torch.set_num_threads(--threads)`.

CPU shims for the official code, kept here and applied only inside `import_official`:
  * `op/upfirdn2d.py` and `op/fused_act.py` compile CUDA extensions at import
    (`torch.utils.cpp_extension.load`); on a CPU tensor `op.upfirdn2d` never calls them (it runs
    `upfirdn2d_native`), so `load` is replaced by a stub whose attributes raise if used.
  * TensorFlow is imported only by the official `datasets.py`, `evaluation.py`, `main.py` and
    `run_lib.py`, none of which this script imports.
  * The official samplers take a `device` argument (default 'cuda'): we pass `--device`.
  * With `--device cuda` the official FIR resampling (`op.upfirdn2d`) runs its pure-PyTorch path
    (`upfirdn2d_native`) on the GPU instead of the CUDA extension, which is not compiled here; the
    two compute the same numbers, the extension faster. JAX runs on its default backend (the GPU
    where jax's CUDA plugin is installed).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))  # the reference cases are a test fixture
from score_jax import (  # noqa: E402
    convert,
    datasets,
    likelihood,
    ode,
    parallel,
    sampling,
    train,
    train_state,  # noqa: E402
)
from score_jax import sde as sde_lib  # noqa: E402
from score_jax.models import utils as mutils  # noqa: E402

import reference as refcases  # noqa: E402
import timing  # noqa: E402  (benchmarks/ is on sys.path when a script here runs)


class _NoCudaExtension:
    """Stands in for a compiled CUDA extension; the CPU code paths never touch it."""

    def __init__(self, name):
        self.name = name

    def __getattr__(self, attr):
        raise RuntimeError(f"official CUDA extension {self.name}.{attr} called on CPU")


def import_official(path: pathlib.Path) -> dict:
    """The official modules this script uses, imported from the checkout at `path`; FIR
    resampling always on `upfirdn2d_native` (the CPU path; on a GPU see the module docstring)."""
    if not (path / "models" / "ncsnpp.py").is_file():
        raise ValueError(f"--official={path}: not a score_sde_pytorch checkout "
                         "(no models/ncsnpp.py)")
    import torch.utils.cpp_extension as cpp_extension

    load = cpp_extension.load
    cpp_extension.load = lambda name, *args, **kwargs: _NoCudaExtension(name)
    sys.path.insert(0, str(path))
    try:
        # Official top-level names (`models`, `sampling`, `likelihood`, `sde_lib`) would clash
        # with nothing of ours: score_jax's modules are all under `score_jax.`.
        names = ["models.ncsnpp", "models.ddpm", "models.utils", "models.ema", "sde_lib",
                 "sampling", "likelihood", "losses"]
        mods = {n: importlib.import_module(n) for n in names}
    finally:
        sys.path.remove(str(path))
        cpp_extension.load = load
    native = sys.modules["op.upfirdn2d"].upfirdn2d_native
    sys.modules["models.up_or_down_sampling"].upfirdn2d = (
        lambda x, k, up=1, down=1, pad=(0, 0):
        native(x, k, up, up, down, down, pad[0], pad[1], pad[0], pad[1]))
    return mods


def official_sde(official, config):
    m, name = config.model, config.training.sde.lower()
    sde_mod = official["sde_lib"]
    if name == "vesde":
        return sde_mod.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
    cls = sde_mod.VPSDE if name == "vpsde" else sde_mod.subVPSDE
    return cls(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)


def build_pair(args, official):
    """(config, official torch model in eval mode, our converted variables)."""
    if args.case:
        config = refcases.case_config(args.case)
        checkpoint = refcases.case_checkpoint(args.case)
    else:
        module = ".".join(pathlib.Path(args.config).with_suffix("").parts)
        config = importlib.import_module(module).get_config()
        if args.nf:
            config.model.nf = args.nf
        if args.image_size:
            config.data.image_size = args.image_size
        checkpoint = None
    cls = {"ncsnpp": official["models.ncsnpp"].NCSNpp, "ddpm": official["models.ddpm"].DDPM}
    if config.model.name not in cls:
        raise ValueError(f"model.name={config.model.name!r}: only ncsnpp and ddpm are compared")
    if args.checkpoint:
        checkpoint = args.checkpoint
    torch.manual_seed(0)
    net = cls[config.model.name](config)
    if checkpoint is None and args.train_steps:
        checkpoint = train_official(args, official, config, net)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        net.load_state_dict({k.removeprefix("module."): v for k, v in state["model"].items()})
        params = convert.load_official_checkpoint(checkpoint, config)["params"]
    else:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.02 * torch.randn_like(p))
        trainable = [p.detach().clone() for p in net.parameters() if p.requires_grad]
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = pathlib.Path(tmp) / "official.pth"
            torch.save({"model": net.state_dict(), "ema": {"shadow_params": trainable}, "step": 0},
                       checkpoint)
            params = convert.load_official_checkpoint(checkpoint, config)["params"]
    net.eval().to(args.device)
    return config, net, {"params": params}


def digits_images(size: int, channels: int) -> np.ndarray:
    """scikit-learn's 1,797 8x8 digits in [0, 1], bilinearly resized to size x size, gray copied
    to `channels`: (1797, channels, size, size) float32, NCHW for torch."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images[:, None].astype(np.float32) / 16.0)
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                             align_corners=False)
    return images.clamp(0, 1).repeat(1, channels, 1, 1).numpy()


def digits_bpd_data(config, n: int, rng) -> np.ndarray:
    """The first `n` upscaled digits, uniformly dequantized with `rng` and scaled as the input
    pipeline does: (n, size, size, channels) float32, NHWC."""
    size, channels = config.data.image_size, config.data.num_channels
    bins = np.floor(digits_images(size, channels)[:n].transpose(0, 2, 3, 1) * 255.0 + 0.5)
    pixels = (bins + rng.uniform(size=bins.shape)) / 256.0
    return ((2.0 * pixels - 1.0) if config.data.centered else pixels).astype(np.float32)


def train_official(args, official, config, net) -> pathlib.Path:
    """Trains the official network `net` in place for `--train_steps` steps of the config's loss
    (official `losses.get_step_fn`) on upscaled digits, Adam at `--train_lr` without warm-up,
    batch `--batch`; saves it as an official checkpoint (EMA = the trained weights) at
    `--save_checkpoint` (or a temporary file) and returns the path. A random network's
    probability-flow ODE is nothing like a trained one's (samples end at noise level), so solver
    accuracy is only comparable on trained weights."""
    losses_off, tr = official["losses"], config.training
    config = config.copy_and_resolve_references()  # the `train` row keeps the config's optimiser
    config.optim.warmup, config.optim.lr = 0, args.train_lr
    sde_off = official_sde(official, config)
    net.to(args.device)  # before the optimiser and the EMA copy their parameters
    state = dict(optimizer=losses_off.get_optimizer(config, net.parameters()), model=net, step=0,
                 ema=official["models.ema"].ExponentialMovingAverage(net.parameters(), decay=0.0))
    step_fn = losses_off.get_step_fn(
        sde_off, train=True, optimize_fn=losses_off.optimization_manager(config),
        reduce_mean=tr.reduce_mean, continuous=tr.continuous,
        likelihood_weighting=tr.likelihood_weighting)
    images = digits_images(config.data.image_size, config.data.num_channels)
    if config.data.centered:
        images = 2.0 * images - 1.0
    rng = np.random.default_rng(1)
    net.train()
    start = time.perf_counter()
    for step in range(1, args.train_steps + 1):
        batch = torch.from_numpy(images[rng.integers(len(images), size=args.batch)]).to(
            args.device)
        loss = step_fn(state, batch).item()
        if step % 50 == 0 or step == args.train_steps:
            print(f"# official training, step {step}/{args.train_steps}: loss {loss:.1f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    net.eval()
    path = args.save_checkpoint or pathlib.Path(tempfile.mkdtemp()) / "official_trained.pth"
    trainable = [p.detach().clone() for p in net.parameters() if p.requires_grad]
    tmp = pathlib.Path(f"{path}.tmp")
    torch.save({"model": net.state_dict(), "ema": {"shadow_params": trainable},
                "step": args.train_steps}, tmp)
    tmp.replace(path)  # never a half-written checkpoint at `path`
    return pathlib.Path(path)


MATCH_NFE = (6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 160, 200, 250, 300)


def cheapest_match(args, sde, model, shape, eps, variables, z, rms, target):
    """(name, jitted sampler, NFE, error) of the sampler in `--match` with the fewest evaluations
    whose RMS error `rms(sample)` is <= `target`, or None. Few-step solvers
    ('method[:order]', default time grid) are searched over MATCH_NFE by doubling, then bisection
    (each NFE is a compilation); 'dopri5' over tolerances 1e-2 .. 1e-6 (a 10^(1/2) ratio).
    'dopri5:PI' uses the PI step-size controller (ode.CONTROLLERS).
    'method[:order]=NFE/NFE/..' and 'dopri5=TOL/TOL/..' try those settings only, in order, up to
    the first that reaches the target (a compilation each: for a device whose time is short, with
    settings found by a search elsewhere)."""
    key, zj = jax.random.PRNGKey(0), jnp.asarray(z)
    found = []

    def probe(name, make):
        sampler = make()
        sample, n = sampler(key, variables, zj)
        err = rms(sample)
        print(f"#   {name}: NFE {int(n)}, error {err:.2e}", flush=True)
        return err <= target, (name, sampler, int(n), err)

    for spec in args.match.split(","):
        spec, _, only = spec.partition("=")
        method, _, order = spec.partition(":")
        if method == "dopri5":
            tols = [float(v) for v in only.split("/")] if only else None
            pcoeff, icoeff = ode.CONTROLLERS[order or "I"]  # 'dopri5:PI': diffrax's PID
            for tol in tols or 10.0 ** -np.arange(2.0, 6.5, 0.5):
                ok, hit = probe(f"{spec} {tol:.1e}", lambda: sampling.get_ode_sampler(
                    sde, model, shape, lambda v: v, rtol=tol, atol=tol, eps=eps,
                    variable=args.ode_variable, pcoeff=pcoeff, icoeff=icoeff))
                if ok:
                    found.append(hit)
                    break
            continue
        make = lambda n: lambda: sampling.get_solver_sampler(
            sde, model, shape, lambda v: v, method, nfe=n, order=int(order or 3), eps=eps)
        if only:
            for n in only.split("/"):
                ok, hit = probe(f"{spec} {n}", make(int(n)))
                if ok:
                    found.append(hit)
                    break
            continue
        lo, hi, i, hits = -1, None, 0, {}
        while hi is None and i < len(MATCH_NFE):  # doubling: MATCH_NFE index 0, 1, 3, 7, ...
            ok, hits[i] = probe(f"{spec} {MATCH_NFE[i]}", make(MATCH_NFE[i]))
            lo, hi = (lo, i) if ok else (i, None)
            i = 2 * i + 1
        if hi is None:
            continue
        while hi - lo > 1:  # the smallest index that reaches the target, between lo and hi
            mid = (lo + hi) // 2
            ok, hits[mid] = probe(f"{spec} {MATCH_NFE[mid]}", make(MATCH_NFE[mid]))
            lo, hi = (lo, mid) if ok else (mid, hi)
        found.append(hits[hi])
    return min(found, key=lambda h: h[2]) if found else None


def labels_for(config, sde, t):
    """The network labels of continuous times `t` (numpy, (B,)), as `get_score_fn` feeds them."""
    if config.training.sde.lower() == "vesde":
        return np.array(sde.marginal_prob(jnp.zeros((1,) * 4), jnp.asarray(t))[1], np.float32)
    return (999.0 * t).astype(np.float32)


# Pause before each timed call. After a parallel region torch's OpenMP workers (libgomp) keep
# spinning for some milliseconds, and XLA's pool threads do too: on 2 cores a call started at
# once shares the CPU with the other side's spinning threads (a 2.6 ms XLA convolution measured
# 6.5 ms right after a torch call). Each call starts on a quiet CPU instead.
QUIET_S = 0.05
interleaved_quiet = functools.partial(timing.interleaved, quiet_s=QUIET_S)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=pathlib.Path)
    parser.add_argument("--case", default=None, help="a reference case in tests/data")
    parser.add_argument("--config", default="configs/ve/cifar10_ncsnpp_continuous.py")
    parser.add_argument("--nf", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="torch's device for the official code (jax: its default backend)")
    parser.add_argument("--only", default="conv,forward,train,ode,bpd,pc")
    parser.add_argument("--checkpoint", type=pathlib.Path, default=None,
                        help="an official .pth checkpoint of --config's network (its 'model' "
                             "weights are compared)")
    parser.add_argument("--train_steps", type=int, default=0,
                        help="train the official network this many steps on upscaled digits "
                             "first (instead of random weights)")
    parser.add_argument("--train_lr", type=float, default=5e-4)
    parser.add_argument("--save_checkpoint", type=pathlib.Path, default=None,
                        help="where --train_steps saves its official checkpoint (reuse it with "
                             "--checkpoint)")
    parser.add_argument("--ode_tols", default="1e-3,1e-5",
                        type=lambda v: [float(x) for x in v.split(",")])
    parser.add_argument("--ode_reference_tol", type=float, default=1e-6)
    parser.add_argument("--match", default="dopri5,unipc:3,dpm_solver++:3,edm_heun",
                        help="our samplers searched for the official ODE's accuracy at equal "
                             "error ('' skips the search)")
    parser.add_argument("--bpd_tols", default="1e-3",
                        type=lambda v: [float(x) for x in v.split(",")])
    parser.add_argument("--bpd_reference_tol", type=float, default=0.0,
                        help="also solve ours at this tolerance (e.g. 1e-6) and report each "
                             "side's error to it")
    parser.add_argument("--bpd_match_tols", default="",
                        help="our settings tried in order for the official's bits/dim error, "
                             "each TOL or VARIABLE:TOL (e.g. sigma:1e-2,sigma:3.2e-3,t:1e-4; "
                             "tried even where ours at equal tolerance is already closer); "
                             "default: t a quarter decade apart below each of --bpd_tols")
    parser.add_argument("--bpd_data", default="uniform", choices=("uniform", "digits"),
                        help="bits/dim of uniform noise or of dequantized digits (upscaled)")
    parser.add_argument("--pc_N", type=int, default=100)
    parser.add_argument("--ode_variable", default="t", choices=ode.ODE_VARIABLES,
                        help="our ODE's variable (ode.probability_flow), ode and bpd rows")
    args = parser.parse_args()
    rows = set(args.only.split(","))

    torch.set_num_threads(args.threads)
    official = import_official(args.official.resolve())
    config, net, variables = build_pair(args, official)
    model = mutils.create_model(config)
    sde, eps = sde_lib.get_sde(config)
    tsde = official_sde(official, config)
    size, channels, b = config.data.image_size, config.data.num_channels, args.batch
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(b, size, size, channels)).astype(np.float32)
    t = np.linspace(0.1, 0.9, b).astype(np.float32)
    labels = labels_for(config, sde, t)
    dev = args.device
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev)
    labels_t = torch.from_numpy(labels).to(dev)
    x_j, labels_j = jnp.asarray(x), jnp.asarray(labels)
    data = (2.0 * x - 1.0) if config.data.centered else x  # x as the data scaler gives it
    data_t = torch.from_numpy(data.transpose(0, 3, 1, 2).copy()).to(dev)

    with torch.no_grad():
        ref = net(x_t, labels_t).cpu().numpy().transpose(0, 2, 3, 1)
    # A separate jit of the same function, so that the `forward` row times its own compilation.
    ours = np.asarray(jax.jit(lambda v, x, l: model.apply(v, x, l, train=False))(
        variables, x_j, labels_j))
    forward = jax.jit(lambda v, x, l: model.apply(v, x, l, train=False))
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"# {args.case or args.config} nf={config.model.nf} {size}x{size}x{channels} batch {b}; "
          f"max|ours - official| / max|official| = {err:.1e}")
    print(f"# jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({dev}, {args.threads} threads); medians of {args.repeats} interleaved repeats")
    print("| what | official (s) | score_jax (s) | ratio | official NFE | score_jax NFE | "
          "official error | score_jax error | score_jax compile (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def row(what, res, nfe=("", ""), error=("", "")):
        (_, t_off), (first, t_ours) = res["official"], res["ours"]
        print(f"| {what} | {t_off:.4g} | {t_ours:.4g} | {t_ours / t_off:.2f} | {nfe[0]} | "
              f"{nfe[1]} | {error[0]} | {error[1]} | {max(first - t_ours, 0):.1f} |", flush=True)

    def torch_call(fn):
        def call():
            with torch.no_grad():
                out = fn()
            if dev == "cuda":
                torch.cuda.synchronize()
            return out
        return call

    if "conv" in rows:
        c = 2 * config.model.nf
        w = (rng.normal(size=(3, 3, c, c)) / (3 * np.sqrt(c))).astype(np.float32)
        h = rng.normal(size=(b, size, size, c)).astype(np.float32)
        w_t = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).to(dev)
        h_t = torch.from_numpy(h.transpose(0, 3, 1, 2).copy()).to(dev)
        conv = jax.jit(lambda h, w: jax.lax.conv_general_dilated(
            h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        w_j, h_j = jnp.asarray(w), jnp.asarray(h)
        res = interleaved_quiet(
            {"official": torch_call(lambda: torch.nn.functional.conv2d(h_t, w_t, padding=1)),
             "ours": lambda: conv(h_j, w_j).block_until_ready()}, args.repeats * 10)
        row(f"one 3x3 conv, {b}x{size}x{size}x{c} -> {c}", res)

    if "forward" in rows:
        res = interleaved_quiet({"official": torch_call(lambda: net(x_t, labels_t)),
                           "ours": lambda: forward(variables, x_j, labels_j).block_until_ready()},
                          args.repeats * 4)
        row("forward", res)

    if "train" in rows:
        tr = config.training
        losses_off = official["losses"]
        train_net = type(net)(config)
        train_net.load_state_dict(net.state_dict())
        train_net.to(dev)
        t_state = dict(optimizer=losses_off.get_optimizer(config, train_net.parameters()),
                       model=train_net, step=0, ema=official["models.ema"].ExponentialMovingAverage(
                           train_net.parameters(), decay=config.model.ema_rate))
        t_step = losses_off.get_step_fn(
            tsde, train=True, optimize_fn=losses_off.optimization_manager(config),
            reduce_mean=tr.reduce_mean, continuous=tr.continuous,
            likelihood_weighting=tr.likelihood_weighting)
        mesh = parallel.make_mesh()
        j_state = {"state": jax.device_put(
            train_state.TrainState.create(variables["params"], train_state.get_optimizer(config),
                                          jax.random.PRNGKey(0)), parallel.replicated(mesh))}
        j_step, _ = train.get_train_fns(config, model, mesh)
        data_j = jax.device_put(jnp.asarray(data[None]), parallel.batch_sharding(mesh, 1))

        def run_ours():
            j_state["state"], m = j_step(j_state["state"], data_j)
            jax.block_until_ready(m)

        res = interleaved_quiet({"official": lambda: t_step(t_state, data_t), "ours": run_ours},
                          args.repeats * 4)
        row("train step (loss, backward, Adam, EMA)", res)

    inverse_scaler = datasets.get_data_inverse_scaler(config)
    shape = (b, size, size, channels)
    z = np.asarray(sde.prior_sampling(jax.random.PRNGKey(0), shape))
    z_t = torch.from_numpy(z.transpose(0, 3, 1, 2).copy()).to(dev)
    if "ode" in rows:
        # Equal accuracy, not only equal tolerance: both samples against one tight solution
        # (ours at rtol = atol = --ode_reference_tol), RMS over all pixels. Tighter than ~1e-6
        # the float32 rounding of the state and the network reaches the error estimate and the
        # step size collapses (a trained network at 1e-7 ran > 9 min without finishing).
        ref_tol = args.ode_reference_tol
        start = time.perf_counter()
        tight = sampling.get_ode_sampler(sde, model, shape, lambda v: v, denoise=False,
                                         rtol=ref_tol, atol=ref_tol, eps=eps)
        reference, n = tight(jax.random.PRNGKey(0), variables, jnp.asarray(z))
        reference = np.asarray(reference)
        rms = lambda a: float(np.sqrt(np.mean((np.asarray(a) - reference) ** 2)))
        # How tight the tight solution is: its distance to ours at 10x its tolerance.
        check = sampling.get_ode_sampler(sde, model, shape, lambda v: v, denoise=False,
                                         rtol=10 * ref_tol, atol=10 * ref_tol, eps=eps)
        spread = rms(check(jax.random.PRNGKey(0), variables, jnp.asarray(z))[0])
        print(f"# tight ODE solution (ours, {ref_tol:g}, {int(n)} NFE, "
              f"{time.perf_counter() - start:.0f} s): RMS {np.sqrt(np.mean(reference ** 2)):.3g}, "
              f"{spread:.2e} from ours at {10 * ref_tol:g}", flush=True)
        targets = {}
        for tol in args.ode_tols:
            t_sampler = official["sampling"].get_ode_sampler(
                tsde, shape=(b, channels, size, size), inverse_scaler=lambda v: v, denoise=False,
                rtol=tol, atol=tol, eps=eps, device=dev)
            j_sampler = sampling.get_ode_sampler(sde, model, shape, lambda v: v, denoise=False,
                                                 rtol=tol, atol=tol, eps=eps,
                                                 variable=args.ode_variable)
            nfe, out = {}, {}

            def run_official():
                sample, nfe["official"] = t_sampler(net, z=z_t)
                out["official"] = sample.cpu().numpy().transpose(0, 2, 3, 1)

            def run_ours():
                sample, n = j_sampler(jax.random.PRNGKey(0), variables, jnp.asarray(z))
                nfe["ours"], out["ours"] = int(n), np.asarray(sample)

            res = interleaved_quiet({"official": torch_call(run_official), "ours": run_ours},
                              args.repeats)
            row(f"ODE sample, rtol=atol={tol:g}", res, (nfe["official"], nfe["ours"]),
                (f"{rms(out['official']):.2e}", f"{rms(out['ours']):.2e}"))
            targets[tol] = (t_sampler, rms(out["official"]))
        for tol, (t_sampler, target) in targets.items():
            if not args.match:
                break
            # Equal accuracy: our cheapest sampler (few-step solvers of --match, dopri5 at
            # tighter tolerances) whose error is at most the official's at `tol`, timed against it.
            match = cheapest_match(args, sde, model, shape, eps, variables, z, rms, target)
            if match is None:
                print(f"# ODE at the official's {tol:g} error ({target:.2e}): none of --match "
                      "reaches it", flush=True)
                continue
            name, j_sampler, n, match_error = match
            out = {}

            def run_official():
                sample, out["nfe"] = t_sampler(net, z=z_t)

            def run_ours():
                jax.block_until_ready(j_sampler(jax.random.PRNGKey(0), variables, jnp.asarray(z)))

            res = interleaved_quiet({"official": torch_call(run_official), "ours": run_ours},
                              args.repeats)
            row(f"ODE at the official's {tol:g} error: ours {name}", res, (out["nfe"], n),
                (f"{target:.2e}", f"{match_error:.2e}"))

    if "bpd" in rows:
        # The same Hutchinson probe on both sides: the official likelihood_fn draws it first thing
        # after our torch.manual_seed(0) (Rademacher: randint_like(0, 2) * 2 - 1), so it is redrawn
        # here the same way and handed to ours. With one probe both sides estimate the same
        # number, so a tight solve of ours (--bpd_reference_tol) is the reference of both.
        if args.bpd_data == "digits":
            bpd_x = digits_bpd_data(config, b, rng)
        else:
            bpd_x = data
        bpd_t = torch.from_numpy(bpd_x.transpose(0, 3, 1, 2).copy()).to(dev)
        torch.manual_seed(0)  # the probe is drawn on bpd_t's device, as the official draws it
        probe = (torch.randint_like(bpd_t, low=0, high=2).float() * 2 - 1).cpu().numpy()
        probe = jnp.asarray(probe.transpose(0, 2, 3, 1))
        data_j = jnp.asarray(bpd_x)

        def ours_at(tol, variable=args.ode_variable):
            return likelihood.get_likelihood_fn(sde, model, inverse_scaler, rtol=tol, atol=tol,
                                                eps=1e-5, variable=variable)

        reference = None
        if args.bpd_reference_tol:
            start = time.perf_counter()
            reference, _, n = ours_at(args.bpd_reference_tol, "t")(None, variables, data_j,
                                                                   probe)
            reference = np.asarray(reference)
            print(f"# tight bits/dim (ours, {args.bpd_reference_tol:g}): mean "
                  f"{reference.mean():.5f}, {int(n)} NFE, {time.perf_counter() - start:.0f} s",
                  flush=True)
        if reference is not None:
            what, fmt = "error to the tight bits/dim", "{:.2e}"
            error = lambda bpd: float(np.sqrt(np.mean((np.asarray(bpd) - reference) ** 2)))
        else:
            what, fmt = "mean bits/dim", "{:.4f}"
            error = lambda bpd: float(np.asarray(bpd).mean())
        for tol in args.bpd_tols:
            t_lik = official["likelihood"].get_likelihood_fn(
                tsde, inverse_scaler, rtol=tol, atol=tol, eps=1e-5)
            samplers = {"ours": ours_at(tol)}
            nfe, out = {}, {}

            def run_official():
                torch.manual_seed(0)
                bpd, _, nfe["official"] = t_lik(net, bpd_t)
                out["official"] = bpd.cpu().numpy()

            def run_ours():
                bpd, _, n = samplers["ours"](None, variables, data_j, probe)
                nfe["ours"], out["ours"] = int(n), np.asarray(bpd)

            res = interleaved_quiet({"official": torch_call(run_official), "ours": run_ours},
                              args.repeats)
            errors = lambda: tuple(fmt.format(error(out[k])) for k in ("official", "ours"))
            row(f"bits/dim, rtol=atol={tol:g} (error columns: {what})", res,
                (nfe["official"], nfe["ours"]), errors())
            target = error(out["official"])
            if reference is None or (error(out["ours"]) <= target and not args.bpd_match_tols):
                continue
            # Equal accuracy: the first of our settings (by default t at tighter tolerances, a
            # quarter decade apart) as close to the tight solve as the official.
            ladder = (args.bpd_match_tols.split(",") if args.bpd_match_tols
                      else [str(v) for v in tol * 10.0 ** -np.arange(0.25, 3.25, 0.25)])
            for entry in ladder:
                variable, _, our_tol = entry.rpartition(":")  # 'TOL' or 'VARIABLE:TOL'
                variable, our_tol = variable or args.ode_variable, float(our_tol)
                samplers["ours"] = ours_at(our_tol, variable)
                run_ours()
                print(f"#   ours ({variable}) at {our_tol:.1e}: NFE {nfe['ours']}, error "
                      f"{error(out['ours']):.2e}", flush=True)
                if error(out["ours"]) <= target:
                    res = interleaved_quiet({"official": torch_call(run_official),
                                             "ours": run_ours},
                                            args.repeats)
                    row(f"bits/dim at the official's {tol:g} error: ours ({variable}) at "
                        f"{our_tol:.1e}", res, (nfe["official"], nfe["ours"]), errors())
                    break

    if "pc" in rows:
        config.model.num_scales = args.pc_N
        sde_pc, _ = sde_lib.get_sde(config)
        tsde_pc = official_sde(official, config)
        kwargs = dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16, n_steps=1,
                      probability_flow=False, continuous=True, denoise=True, eps=eps)
        t_off = official["sampling"]
        t_sampler = t_off.get_pc_sampler(
            tsde_pc, (b, channels, size, size), t_off.get_predictor("reverse_diffusion"),
            t_off.get_corrector("langevin"), inverse_scaler, snr=0.16, n_steps=1,
            probability_flow=False, continuous=True, denoise=True, eps=eps, device=dev)
        j_sampler = sampling.get_pc_sampler(sde_pc, model, shape, kwargs.pop("predictor"),
                                            kwargs.pop("corrector"), inverse_scaler, **kwargs)
        res = interleaved_quiet({
            "official": torch_call(lambda: t_sampler(net)),
            "ours": lambda: jax.block_until_ready(j_sampler(jax.random.PRNGKey(0), variables))},
            args.repeats)
        row(f"PC sample, N={args.pc_N}, 1 Langevin step", res, (2 * args.pc_N, 2 * args.pc_N))


if __name__ == "__main__":
    main()
