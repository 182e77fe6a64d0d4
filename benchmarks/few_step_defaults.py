"""Which grid, final-step order and variant each few-step solver should default to: every solver
setting against plain DPM-Solver++(2M) on a uniform log-SNR grid, on closed-form problems
(`benchmarks/mixtures.py`: Gaussian data, wide and narrow Gaussian mixtures; float64; exact score)
for VE, VP and sub-VP at 5, 10 and 20 NFE.

    python benchmarks/few_step_defaults.py                      # 1,024 latents x 2 mixture draws
    python benchmarks/few_step_defaults.py --n 256 --seeds 0 --out /tmp/defaults.json

Per setting (method, order, variant, time grid, `lower` = when the multistep solvers lower their
order at the final steps: 'short' below 10 steps (the DPM-Solver/UniPC code), 'never', 'always')
it prints the relative RMS error to the exact flow and the component switch rate (share of
samples that end in another mixture component than the exact flow's), and, per solver, the
fixed setting whose worst ratio err(2M) / err(setting) over all cases is the largest, beside the
worst ratio of the solver's defaults (`solvers.table` without a grid: `default_solver`,
`default_time_grid`; rows 'default').
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from score_jax import solvers  # noqa: E402

from mixtures import DATA, SDES, problem  # noqa: E402

KMAX = 24
LOWER = {"short": 10, "never": 0, "always": 10**6}
SOLVER_SETTINGS = [("ddim", {}), ("dpm_solver", {"order": 2}), ("dpm_solver", {"order": 3}),
                   ("dpm_solver++", {"order": 2}), ("dpm_solver++", {"order": 3}),
                   ("unipc", {"order": 2, "variant": "bh1"}),
                   ("unipc", {"order": 2, "variant": "bh2"}),
                   ("unipc", {"order": 3, "variant": "bh1"}),
                   ("unipc", {"order": 3, "variant": "bh2"}), ("edm_heun", {})]
MULTISTEP = ("dpm_solver++", "unipc")


@contextlib.contextmanager
def lower_final(kind: str):
    """Raw settings (a grid given): the final-step rule `kind`."""
    old = solvers.LOWER_ORDER_FINAL_BELOW
    solvers.LOWER_ORDER_FINAL_BELOW = LOWER[kind]
    try:
        yield
    finally:
        solvers.LOWER_ORDER_FINAL_BELOW = old


_RUNNERS = {}


def solve(prob, tab):
    """The table on the problem's latents, padded to KMAX rows (one compilation per problem)."""
    key = (id(prob), tab.prediction)
    if key not in _RUNNERS:
        sde, score = prob.sde, prob.score
        _RUNNERS[key] = jax.jit(lambda x, c: solvers.integrate(
            sde, score, x, solvers.Table(*c, tab.prediction)))
    pad = KMAX - len(tab.t)
    fills = (tab.t[-1], 1.0, 0.0, 1.0, 0.0, 0.0)
    coeffs = tuple(np.concatenate([m, np.full((pad,) + m.shape[1:], f)])
                   for m, f in zip(tab[:6], fills))
    return _RUNNERS[key](jnp.asarray(prob.z), coeffs)


def setting_id(method, kw, grid, lower):
    extra = "".join(f"-{v}" for v in kw.values())
    return f"{method}{extra}|{grid}|{lower}"


def measure(seeds, n, nfes):
    rows = []
    with jax.enable_x64(True):
        for sde_name, data, seed in itertools.product(SDES, DATA, seeds):
            prob = problem(sde_name, data, seed=seed, n=n)
            for nfe in nfes:
                settings = [(method, kw, grid, lower) for (method, kw), grid in itertools.product(
                    SOLVER_SETTINGS, solvers.TIME_GRIDS)
                    for lower in (LOWER if method in MULTISTEP else ["short"])]
                settings += [(method, kw, "default", "default") for method, kw in SOLVER_SETTINGS]
                for method, kw, grid, lower in settings:
                    if lower == "default":  # what solvers.table does unless told otherwise
                        tab = solvers.table(prob.sde, method, nfe, prob.eps, **kw)
                    else:
                        with lower_final(lower):
                            tab = solvers.table(prob.sde, method, nfe, prob.eps,
                                                time_grid_kind=grid, **kw)
                    y = np.asarray(solve(prob, tab))
                    ok = np.all(np.isfinite(y))
                    rows.append({"sde": sde_name, "data": data, "seed": seed, "nfe": nfe,
                                 "setting": setting_id(method, kw, grid, lower),
                                 "error": prob.error(y) if ok else float("inf"),
                                 "switch": prob.switch_rate(y) if ok else 1.0})
            print(f"{sde_name} {data} seed {seed}: done", file=sys.stderr, flush=True)
    return rows


BASELINE = setting_id("dpm_solver++", {"order": 2}, "logsnr", "short")


def ratios(rows):
    """{setting: {case: err(2M) / err(setting)}}, case = (sde, data, seed, nfe)."""
    base = {(r["sde"], r["data"], r["seed"], r["nfe"]): r["error"] for r in rows
            if r["setting"] == BASELINE}
    out = {}
    for r in rows:
        case = (r["sde"], r["data"], r["seed"], r["nfe"])
        out.setdefault(r["setting"], {})[case] = base[case] / r["error"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="latents per problem")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="mixture draws")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 7, 10, 12, 15, 20])
    parser.add_argument("--out", default="", help="write every row as JSON here")
    parser.add_argument("--rows", default="", help="read the rows of an earlier --out instead")
    args = parser.parse_args()
    if args.rows:
        rows = json.load(open(args.rows))
    else:
        rows = measure(args.seeds, args.n, args.nfe)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f)
    rat = ratios(rows)
    by_solver = {}
    for setting in rat:
        by_solver.setdefault(setting.split("|")[0], []).append(setting)
    print("\nPer solver: the setting with the best worst-case ratio err(2M logsnr) / err, over "
          f"{len(next(iter(rat.values())))} cases (SDE x data x mixture draw x NFE)")
    print("| solver | default | worst ratio | best fixed setting (grid, lower) | worst ratio |"
          " geo. mean ratio |")
    print("|---|---|---:|---|---:|---:|")
    for solver, settings in by_solver.items():
        current = f"{solver}|default|default"
        settings = [x for x in settings if x != current]
        best = max(settings, key=lambda s: (min(rat[s].values()),
                                            np.mean(np.log(list(rat[s].values())))))
        geo = float(np.exp(np.mean(np.log(list(rat[best].values())))))
        print(f"| {solver} | {current.split('|', 1)[1]} | {min(rat[current].values()):.2f} | "
              f"{best.split('|', 1)[1]} | {min(rat[best].values()):.2f} | {geo:.2f} |")
    # The error table of the defaults and of 2M.
    print("\nRelative RMS error (switch rate) at " + " / ".join(map(str, sorted({
        r["nfe"] for r in rows}))) + f" NFE, mixture draw {rows[0]['seed']}, defaults")
    chosen = [BASELINE] + [setting_id(m, kw, "default", "default") for m, kw in SOLVER_SETTINGS]
    seed = rows[0]["seed"]
    index = {(r["setting"], r["sde"], r["data"], r["seed"], r["nfe"]): r for r in rows}
    nfes = sorted({r["nfe"] for r in rows})
    for sde_name in SDES:
        print(f"\n{sde_name}:\n| setting | " + " | ".join(DATA) + " |")
        print("|---|" + "---|" * len(DATA))
        for setting in dict.fromkeys(chosen):
            cells = []
            for data in DATA:
                rs = [index.get((setting, sde_name, data, seed, n)) for n in nfes]
                cells.append(" / ".join(f"{r['error']:.2e}" + (f" ({r['switch']:.1%})"
                                                               if r["switch"] else "")
                                        for r in rs if r))
            print(f"| {setting} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
