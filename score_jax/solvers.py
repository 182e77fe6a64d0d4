"""Few-step samplers for VE, VP and sub-VP on the marginal x_t = alpha_t x_0 + sigma_t z and
lambda_t = log(alpha_t / sigma_t): exponential-integrator ODE solvers (`ddim`, `dpm_solver`,
`dpm_solver++`, `unipc`, `edm_heun`) and an adaptive SDE solver (`adaptive_sde`). Arrays NHWC.

An ODE solver's step is linear in the current point, its step's start and a few predictions
(D = (x + sigma^2 s) / alpha or eps = -sigma s), with coefficients that depend only on the time
grid: a host function writes them (float64) into a `Table`, and one jitted `lax.scan`
(`integrate`) runs any table, one row per network evaluation (NFE = rows, exactly)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.sde import batch_mul

Array = jax.Array

TIME_GRIDS = ("uniform_t", "logsnr", "karras", "quadratic", "logsnr_power")
# 'logsnr_power': lambda_T + (lambda_eps - lambda_T) u^0.6, steps shrinking toward the data, where
# the data prediction of narrow modes changes fastest (tests: 2-5x more accurate at 20 NFE).
LOGSNR_POWER = 0.6
METHODS = ("ddim", "dpm_solver", "dpm_solver++", "unipc", "edm_heun", "adaptive_sde")
ORDERS = {"dpm_solver": (1, 2, 3), "dpm_solver++": (1, 2, 3), "unipc": (1, 2, 3)}
VARIANTS = ("bh1", "bh2")
# Predictions kept in the history: the most any table looks back (UniPC-3's corrector).
HISTORY = 4
# Multistep solvers lower their order at the final steps of runs shorter than this (as the
# DPM-Solver and UniPC code: it steadies runs of a few steps; longer ones keep the full order).
LOWER_ORDER_FINAL_BELOW = 10
# Defaults measured against plain DPM-Solver++(2M) on the uniform log-SNR grid
# (benchmarks/few_step_defaults.py; README, Few-step samplers), used when no grid is given: a
# dpm_solver++ or unipc run of order >= 2 and fewer steps than SHORT_RUN_BELOW is DPM-Solver++(2M)
# on 'logsnr' (third order and UniPC's corrector lose to it there, up to 20x at 7-8 NFE on narrow
# mixtures); third-order runs of SHORT_RUN_BELOW to POWER_GRID_BELOW steps use 'logsnr_power'
# (on 'logsnr' they lose to 2M at 10-12 NFE); longer ones 'logsnr'.
SHORT_RUN_BELOW = 10
POWER_GRID_BELOW = 15


class Table(NamedTuple):
    """Row k (float64) evaluates P_k = prediction(y_k, t_k), then base = u_k y_k + v_k base +
    c_k . P and y_{k+1} = a_k base + b_k . P; t, u, v, a (K,), c, b (K, HISTORY) with column j
    weighting P_{k-j}; `prediction` 'data' or 'noise'."""

    t: np.ndarray
    u: np.ndarray
    v: np.ndarray
    a: np.ndarray
    c: np.ndarray
    b: np.ndarray
    prediction: str


class _Schedule:
    """alpha, sigma, lambda of an SDE and the inverse of lambda, as float64 numpy arrays."""

    def __init__(self, sde):
        self.sde = sde

    def _f64(self, fn, x):
        # Padded to a multiple of 256 values so that eager jax compiles each op for few shapes.
        x = np.asarray(x, np.float64)
        flat = x.reshape(-1)
        padded = np.resize(flat, -(-max(flat.size, 1) // 256) * 256)
        with jax.enable_x64(True):
            out = np.array(fn(jnp.asarray(padded)), np.float64)
        return out[:flat.size].reshape(x.shape)

    def alpha(self, t):
        return self._f64(self.sde.alpha, t)

    def sigma(self, t):
        return self._f64(self.sde.sigma, t)

    def lam(self, t):
        return self._f64(self.sde.log_snr, t)

    def t(self, lam):
        return self._f64(self.sde.t_from_log_snr, lam)


class _Rows:
    """Builds a `Table`. `p(k)` is evaluation k's prediction as a symbol (a unit vector over
    evaluations), so the solvers write their formulas with predictions as the papers do."""

    def __init__(self, n_max: int, prediction: str):
        self.n_max, self.prediction, self.rows = n_max, prediction, []

    @property
    def k(self) -> int:  # index of the next evaluation
        return len(self.rows)

    def p(self, k: int) -> np.ndarray:
        e = np.zeros(self.n_max)
        e[k] = 1.0
        return e

    def add(self, t, a, b, u=1.0, v=0.0, c=0.0):
        """One evaluation at time t: base = u y + v base + c . P; y = a base + b . P."""
        self.rows.append((float(t), u, v, a, np.broadcast_to(c, (self.n_max,)),
                          np.broadcast_to(b, (self.n_max,))))

    def table(self) -> Table:
        t, u, v, a, c, b = (np.array(col, np.float64) for col in zip(*self.rows))
        lags = np.arange(HISTORY)
        k = np.arange(len(t))[:, None]

        def by_lag(m):  # column j <- the coefficient of evaluation k - j
            idx = k - lags
            out = np.where(idx >= 0, np.take_along_axis(m, np.maximum(idx, 0), 1), 0.0)
            if not np.allclose(np.sum(np.abs(out), 1), np.sum(np.abs(m), 1)):
                raise AssertionError("a solver looks back further than HISTORY evaluations")
            return out

        return Table(t, u, v, a, by_lag(c), by_lag(b), self.prediction)


def default_time_grid(method: str, nfe: int, order: int = 3, denoise: bool = False) -> str:
    """The grid `table` uses when none is given (measured: README, Few-step samplers)."""
    if method == "edm_heun":
        return "karras"
    steps = int(nfe) - int(denoise)
    if (method in ("dpm_solver++", "unipc") and order >= 3
            and SHORT_RUN_BELOW <= steps < POWER_GRID_BELOW):
        return "logsnr_power"
    return "logsnr"


def default_solver(method: str, nfe: int, order: int = 3, denoise: bool = False):
    """(method, order) that `table` runs when no grid is given (see SHORT_RUN_BELOW)."""
    if (method in ("dpm_solver++", "unipc") and order >= 2
            and int(nfe) - int(denoise) < SHORT_RUN_BELOW):
        return "dpm_solver++", 2
    return method, order


def time_grid(sde, kind: str, n: int, eps: float) -> np.ndarray:
    """n + 1 times from T down to eps (float64), uniform in t, lambda ('logsnr'), (sigma /
    alpha)^(1/7) ('karras', EDM's rho = 7), sqrt(t - eps) ('quadratic') or lambda^(1/0.6)."""
    if kind not in TIME_GRIDS:
        raise ValueError(f"sampling.time_grid={kind!r} is unknown; valid: {list(TIME_GRIDS)}")
    sch, T = _Schedule(sde), float(sde.T)
    u = np.linspace(0.0, 1.0, n + 1)
    if kind == "uniform_t":
        ts = T + (eps - T) * u
    elif kind == "quadratic":
        ts = eps + (T - eps) * (1.0 - u) ** 2
    elif kind in ("logsnr", "logsnr_power"):
        u = u ** LOGSNR_POWER if kind == "logsnr_power" else u
        ts = sch.t(sch.lam(T) + (sch.lam(eps) - sch.lam(T)) * u)
    else:
        rho = 7.0
        s_max, s_min = np.exp(-sch.lam(T)) ** (1 / rho), np.exp(-sch.lam(eps)) ** (1 / rho)
        ts = sch.t(-rho * np.log(s_max + (s_min - s_max) * u))
    ts[0], ts[-1] = T, eps
    return ts


def _orders(order: int, n: int) -> list[int]:
    # Orders of the n steps of a multistep solver: warm-up 1, 2, ..., and, below
    # LOWER_ORDER_FINAL_BELOW steps, no more than the steps left.
    final = n < LOWER_ORDER_FINAL_BELOW
    return [min(order, i + 1, n - i if final else order) for i in range(n)]


def _singlestep_orders(order: int, nfe: int) -> list[int]:
    """The step orders of singlestep DPM-Solver spending `nfe` evaluations (the 'fast' mix)."""
    if order == 3:
        steps = nfe // 3 + 1
        return [3] * (steps - 2) + [2, 1] if nfe % 3 == 0 else [3] * (steps - 1) + [nfe % 3]
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    return [1] * nfe


def step_orders(method: str, order: int, budget: int) -> list[int]:
    """The order of each step (grid interval) of `method` spending at most `budget` evaluations."""
    if method == "dpm_solver":
        return _singlestep_orders(order, budget)
    if method == "edm_heun":  # Heun steps (2 evaluations), the last one Euler
        n = (budget + 1) // 2
        return [2 if i < n - 1 else 1 for i in range(n)]
    return _orders(1 if method == "ddim" else order, budget)


# The solvers below write one row per evaluation. In their comments, step i goes from t_i to
# t_{i+1} < t_i; a_i = alpha(t_i), s_i = sigma(t_i), h = lambda_{i+1} - lambda_i > 0, D_i and
# eps_i the data and noise predictions at x_i.

def ddim(sde, ts, rows: _Rows, orders: list[int]) -> None:
    """DDIM (eta = 0) = DPM-Solver-1 = DPM-Solver++(1): every step of order 1."""
    dpm_solver_pp(sde, ts, rows, orders)


def dpm_solver_pp(sde, ts, rows: _Rows, orders: list[int]) -> None:
    """DPM-Solver++ multistep in the data prediction (Lu et al. 2022, Alg. 2), steps of the given
    orders; order 3 is their code's update with the second difference D2 weighted twice."""
    # Their code's weight of D2 makes '3M' a second-order method (measured in test_solvers.py).
    sch = _Schedule(sde)
    lam, alpha, sigma = sch.lam(ts), sch.alpha(ts), sch.sigma(ts)
    for i, k in enumerate(orders):
        h = lam[i + 1] - lam[i]
        phi1 = np.expm1(-h)
        p = [rows.p(i - j) if i >= j else 0.0 for j in range(3)]
        # 1: x_{i+1} = (s_{i+1}/s_i) x_i - a_{i+1} (e^{-h}-1) D_i
        update = -phi1 * p[0]
        if k == 2:
            # 2M: ... - a_{i+1} (e^{-h}-1) (D_i - D_{i-1}) / (2 r0), r0 = h_{i-1} / h
            r0 = (lam[i] - lam[i - 1]) / h
            update = update - 0.5 * phi1 * (p[0] - p[1]) / r0
        elif k == 3:
            # 3M: ... + a_{i+1} (phi2 D1 - 2 (phi2/h - 1/2) D2), phi2 = (e^{-h}-1)/h + 1, D1 and
            # D2 the first and second divided differences of D_i, D_{i-1}, D_{i-2} in lambda.
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = (p[0] - p[1]) / r0, (p[1] - p[2]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            update = update + phi2 * d1 - 2.0 * (phi2 / h - 0.5) * d2
        rows.add(ts[i], a=sigma[i + 1] / sigma[i], b=alpha[i + 1] * update)


def _unipc_update(lam, alpha, rows, i, k, variant, corrector):
    """UniPC's predictor or corrector of order k for the step t_i -> t_{i+1}, as b . P."""
    # Zhao et al. 2023, their code's `multistep_uni_pc_bh_update` in the data prediction.
    h = lam[i + 1] - lam[i]
    alpha_t = alpha[i + 1]
    rks = np.array([(lam[i - m] - lam[i]) / h for m in range(1, k)] + [1.0])
    d1s = [(rows.p(i - m) - rows.p(i)) / rks[m - 1] for m in range(1, k)]
    hh = -h
    h_phi_1 = np.expm1(hh)
    b_h = hh if variant == "bh1" else np.expm1(hh)
    # rho solves R rho = g: R_jm = r_m^(j-1), g_j = j! (-h) phi_{j+1}(-h) / B(h), phi_k the
    # exponential-integrator functions (phi_1(z) = (e^z - 1)/z).
    h_phi_k, fact, R, g = h_phi_1 / hh - 1.0, 1.0, [], []
    for j in range(1, k + 1):
        R.append(rks ** (j - 1))
        g.append(h_phi_k * fact / b_h)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    R, g = np.array(R), np.array(g)
    update = -alpha_t * h_phi_1 * rows.p(i)
    if corrector:
        rhos = np.array([0.5]) if k == 1 else np.linalg.solve(R, g)
        d1s = d1s + [rows.p(i + 1) - rows.p(i)]
    else:
        rhos = np.array([0.5]) if k == 2 else np.linalg.solve(R[:-1, :-1], g[:-1])
    return update - alpha_t * b_h * sum((r * d for r, d in zip(rhos, d1s)), 0.0)


def unipc(sde, ts, rows: _Rows, orders: list[int], variant: str) -> None:
    """UniPC: each step's UniP predictor, then the UniC corrector of the step just taken at the
    evaluation that starts the next one, reusing it (none after the last step)."""
    sch = _Schedule(sde)
    lam, alpha, sigma = sch.lam(ts), sch.alpha(ts), sch.sigma(ts)
    for i in range(len(orders)):
        if i == 0:
            base = {}
        else:
            # UniC of step i-1, with h = lambda_i - lambda_{i-1} and the new D_i:
            # x^c_i = (s_i/s_{i-1}) x^c_{i-1} - a_i (e^{-h}-1) D_{i-1}
            #         - a_i B(h) [sum_m rho_m (D_{i-1-m} - D_{i-1}) / r_m + rho_k (D_i - D_{i-1})]
            c = _unipc_update(lam, alpha, rows, i - 1, orders[i - 1], variant, corrector=True)
            base = dict(u=0.0, v=sigma[i] / sigma[i - 1], c=c)
        # UniP: x_{i+1} = (s_{i+1}/s_i) x^c_i - a_{i+1} (e^{-h}-1) D_i
        #                 - a_{i+1} B(h) sum_m rho_m (D_{i-m} - D_i) / r_m,
        # r_m = (lambda_{i-m} - lambda_i) / h, B(h) = -h ('bh1') or e^{-h}-1 ('bh2').
        b = _unipc_update(lam, alpha, rows, i, orders[i], variant, corrector=False)
        rows.add(ts[i], a=sigma[i + 1] / sigma[i], b=b, **base)


def dpm_solver(sde, ts, rows: _Rows, orders: list[int], kind: str) -> None:
    """Singlestep DPM-Solver (Lu et al. 2022, noise prediction, 'fast' variant), steps of the
    given orders, intermediate points at lambda fractions 1/2 (order 2) and 1/3, 2/3 (order 3)."""
    # The steps start at the points of `ts` (a budget-interval grid) that the orders reach (their
    # `get_orders_and_timesteps_for_singlestep_solver`), or are uniform in lambda on the 'logsnr'
    # grid, or are `ts` itself when `kind` is 'given'.
    sch = _Schedule(sde)
    if kind == "given":
        outer = ts
    elif kind == "logsnr":
        outer = time_grid(sde, kind, len(orders), ts[-1])
    else:
        outer = ts[np.cumsum([0] + orders)]
    fracs = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}
    lam = sch.lam(outer)
    mids = sch.t(np.array([lam[m] + r * (lam[m + 1] - lam[m])
                           for m, k in enumerate(orders) for r in fracs[k]] or [ts[-1]]))
    alpha, sigma, alpha_mid, sigma_mid = (f(x) for x in (outer, mids)
                                          for f in (sch.alpha, sch.sigma))
    q = 0
    for m, k in enumerate(orders):
        h, r, j = lam[m + 1] - lam[m], fracs[k], rows.k
        e0 = rows.p(j)
        # Stage points u_1, u_2 (at lambda_s + r_1 h, lambda_s + r_2 h), then x_t; every stage
        # starts from x_s (noise-prediction forms of the paper's Alg. 1 and 2):
        # (time, alpha, sigma, lambda fraction).
        targets = [(mids[q + i], alpha_mid[q + i], sigma_mid[q + i], r[i]) for i in range(len(r))]
        targets.append((outer[m + 1], alpha[m + 1], sigma[m + 1], 1.0))
        q += len(r)
        for stage, (_, alpha_tt, sigma_tt, ri) in enumerate(targets):
            # u = (a_u/a_s) x_s - s_u (e^{r h}-1) eps_s
            phi = np.expm1(ri * h)
            b = -sigma_tt * phi * e0
            if stage == 1 and k == 3:
                # u_2: ... - (r_2/r_1) s_u ((e^{r_2 h}-1)/(r_2 h) - 1) (eps_{u_1} - eps_s)
                phi22 = np.expm1(r[1] * h) / (r[1] * h) - 1.0
                b = b - r[1] / r[0] * sigma_tt * phi22 * (rows.p(j + 1) - e0)
            elif stage == len(targets) - 1 and k == 2:
                # x_t: ... - s_t / (2 r_1) (e^h-1) (eps_{u_1} - eps_s)
                b = b - sigma_tt / (2 * r[0]) * phi * (rows.p(j + 1) - e0)
            elif stage == len(targets) - 1 and k == 3:
                # x_t: ... - (s_t/r_2) ((e^h-1)/h - 1) (eps_{u_2} - eps_s)
                b = b - sigma_tt / r[1] * (phi / h - 1.0) * (rows.p(j + 2) - e0)
            start = dict(u=1.0, v=0.0) if stage == 0 else dict(u=0.0, v=1.0)
            rows.add(outer[m] if stage == 0 else targets[stage - 1][0], a=alpha_tt / alpha[m],
                     b=b, **start)


def edm_heun(sde, ts, rows: _Rows, orders: list[int]) -> None:
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1) on x / alpha_t with noise level
    sigma_t / alpha_t = e^-lambda: a Heun step where the order is 2, else Euler."""
    sch = _Schedule(sde)
    sig, alpha = np.exp(-sch.lam(ts)), sch.alpha(ts)
    for i, k in enumerate(orders):
        s, t = ts[i], ts[i + 1]
        sig_s, sig_t, alpha_s, alpha_t = sig[i], sig[i + 1], alpha[i], alpha[i + 1]
        d = sig_t - sig_s
        # Euler step x^ + d (x^ - D) / sigma, written for x = alpha x^; the DDIM step:
        # x_{i+1} = (s_{i+1}/s_i) x_i + a_{i+1} (1 - e^{-h}) D_i
        j = rows.k
        rows.add(s, a=alpha_t * sig_t / (alpha_s * sig_s),
                 b=alpha_t * (1 - sig_t / sig_s) * rows.p(j))
        if k == 2:
            # Apply 2nd order correction: average the slopes at both ends; continue from there.
            # x_{i+1} = a_{i+1} [x^_i + d/2 ((x^_i - D_i)/sig_s + (x^'_{i+1} - D'_{i+1})/sig_t)]
            c = -alpha_t * d / 2 * (rows.p(j + 1) / sig_t + rows.p(j) / sig_s)
            rows.add(t, a=1.0, b=0.0, u=d / (2 * sig_t),
                     v=alpha_t / alpha_s * (1 + d / (2 * sig_s)), c=c)


def grid_steps(method: str, nfe: int, order: int = 3, denoise: bool = False) -> int:
    """Intervals of the time grid `table` steps on: one per step (stages lie inside)."""
    return len(step_orders(method, order, int(nfe) - int(denoise)))


def _grid_array(sde, grid, steps: int, eps: float) -> np.ndarray:
    """A given grid as float64, checked: 1-D, steps + 1 times, strictly decreasing from T to eps."""
    ts = np.array(grid, np.float64)
    T = float(sde.T)
    if ts.ndim != 1 or len(ts) != steps + 1:
        raise ValueError(f"sampling.time_grid: an array grid needs {steps + 1} times (T to eps) "
                         f"for this method and budget, got shape {ts.shape}")
    if not (np.isclose(ts[0], T, rtol=1e-9, atol=0) and np.isclose(ts[-1], eps, rtol=1e-6, atol=0)
            and np.all(np.diff(ts) < 0)):
        raise ValueError(f"sampling.time_grid: an array grid must fall strictly from T={T} to "
                         f"eps={eps}; got {ts[0]!r} ... {ts[-1]!r} (decreasing: "
                         f"{bool(np.all(np.diff(ts) < 0))})")
    ts[0], ts[-1] = T, eps
    return ts


def table(sde, method: str, nfe: int, eps: float, *,
          time_grid_kind: str | np.ndarray | None = None, order: int = 3, variant: str = "bh2",
          denoise: bool = False) -> Table:
    """The table of an ODE `method` spending at most `nfe` evaluations (`len(table.t)`), from T to
    eps on `time_grid_kind` (a name, an array of `grid_steps(...) + 1` times, or None for the
    measured defaults); `denoise` spends the last one on x = D(x, eps). ValueError on bad input."""
    check_args(method, nfe, time_grid_kind, order, variant, denoise)
    if eps <= 0 or eps >= sde.T:
        raise ValueError(f"the sampling end time eps={eps} must lie in (0, T={sde.T}) (sigma_eps "
                         "> 0: the solvers step in lambda = log(alpha/sigma))")
    ends = _Schedule(sde).lam(np.array([sde.T, eps]))
    if not np.all(np.isfinite(ends)):
        raise ValueError(f"sampling.method={method!r} needs alpha_t > 0 and sigma_t > 0 on "
                         f"[eps, T]; {type(sde).__name__} has lambda = {ends} at T and eps={eps}")
    budget = nfe - int(denoise)
    if time_grid_kind is None:  # the measured defaults
        method, order = default_solver(method, nfe, order, denoise)
    orders = step_orders(method, order, budget)
    if isinstance(time_grid_kind, str) or time_grid_kind is None:
        kind = time_grid_kind or default_time_grid(method, nfe, order, denoise)
        # Singlestep DPM-Solver picks its step points from a grid of `budget` intervals.
        steps = len(orders) if method == "edm_heun" else budget
        ts = time_grid(sde, kind, steps, eps)
    else:  # the grid itself; for singlestep DPM-Solver, its outer (step) grid
        kind = "given"
        ts = _grid_array(sde, time_grid_kind, grid_steps(method, nfe, order, denoise), eps)
    rows = _Rows(budget + 1, "noise" if method == "dpm_solver" else "data")
    if method == "ddim":
        ddim(sde, ts, rows, orders)
    elif method == "dpm_solver++":
        dpm_solver_pp(sde, ts, rows, orders)
    elif method == "unipc":
        unipc(sde, ts, rows, orders, variant)
    elif method == "dpm_solver":
        dpm_solver(sde, ts, rows, orders, kind)
    else:
        edm_heun(sde, ts, rows, orders)
    if denoise:
        # x_0 = D_eps, or (x_eps - s_eps eps_eps) / a_eps for a noise prediction.
        sch, j = _Schedule(sde), rows.k
        noise = rows.prediction == "noise"
        rows.add(eps, a=1 / sch.alpha(eps) if noise else 0.0,
                 b=(-sch.sigma(eps) / sch.alpha(eps) if noise else 1.0) * rows.p(j))
    return rows.table()


def check_args(method, nfe, time_grid_kind=None, order=3, variant="bh2", denoise=False) -> None:
    """Raises ValueError naming the `sampling.*` key for an unknown method, grid, order or
    variant, or an `nfe` too small for the method's order."""
    if method not in METHODS:
        raise ValueError(f"sampling.method={method!r} is unknown; valid: "
                         f"{['pc', 'ode', *METHODS]}")
    if isinstance(time_grid_kind, str) and time_grid_kind not in TIME_GRIDS:
        raise ValueError(f"sampling.time_grid={time_grid_kind!r} is unknown; valid: "
                         f"{list(TIME_GRIDS)}")
    if method in ORDERS and order not in ORDERS[method]:
        raise ValueError(f"sampling.order={order!r} is not valid for {method}; valid: "
                         f"{list(ORDERS[method])}")
    if method == "unipc" and variant not in VARIANTS:
        raise ValueError(f"sampling.variant={variant!r} is unknown; valid: {list(VARIANTS)}")
    least = (order if method in ORDERS else 1) + int(denoise)
    if method != "adaptive_sde" and (int(nfe) != nfe or nfe < least):
        raise ValueError(f"sampling.nfe={nfe!r} is too small for {method} (order {order}"
                         f"{', noise_removal' if denoise else ''}); valid: integers >= {least}")


def prediction_fn(sde, score_fn, kind: str):
    """`(x, t) -> D(x, t)` ('data') or `eps(x, t)` ('noise'), t a scalar."""

    def fn(x, t):
        t = jnp.full((x.shape[0],), t, x.dtype)
        score = score_fn(x, t).astype(x.dtype)
        if kind == "noise":
            return sde.noise_prediction(score, t)
        return sde.data_prediction(x, score, t)

    return fn


def integrate(sde, score_fn, x: Array, tab: Table) -> Array:
    """Runs the table's evaluations from x (at tab.t[0]) in one `lax.scan`; returns the last y."""
    pred = prediction_fn(sde, score_fn, tab.prediction)
    coeffs = tuple(jnp.asarray(m, x.dtype) for m in (tab.t, tab.u, tab.v, tab.a, tab.c, tab.b))

    def body(carry, row):
        base, y, hist = carry
        t, u, v, a, c, b = row
        # hist[j] = P_{k-j}: the newest prediction in front, the oldest drops out.
        hist = jnp.concatenate([pred(y, t)[None], hist[:-1]])
        base = u * y + v * base + jnp.tensordot(c, hist, 1)
        return (base, a * base + jnp.tensordot(b, hist, 1), hist), None

    hist = jnp.zeros((HISTORY,) + x.shape, x.dtype)
    (_, y, _), _ = jax.lax.scan(body, (x, x, hist), coeffs)
    return y


def grid_runner(sde, score_fn, method: str, nfe: int, eps: float, *, order: int = 3,
                variant: str = "bh2", denoise: bool = False):
    """`run(x, grid) -> x at eps`: `method` on any grid (a name or an array, as `table`), one
    compilation for all grids (the table's coefficients are arguments of the jitted scan)."""
    prediction = table(sde, method, nfe, eps, order=order, variant=variant,
                       denoise=denoise).prediction
    scan = jax.jit(lambda x, coeffs: integrate(sde, score_fn, x, Table(*coeffs, prediction)))

    def run(x, grid):
        tab = table(sde, method, nfe, eps, time_grid_kind=grid, order=order, variant=variant,
                    denoise=denoise)
        return scan(x, tuple(np.asarray(m, x.dtype) for m in tab[:6]))

    return run


def reference_flow(sde, score_fn, x, eps: float, *, tol: float = 1e-6, denoise: bool = False,
                   max_steps: int = 16384):
    """x (at T) mapped to eps by the probability-flow ODE (dopri5 at rtol = atol = `tol`, in x's
    dtype), then D(x, eps) with `denoise`: what a few-step solver approximates."""
    from score_jax import ode

    drift = ode.probability_flow_drift(sde, score_fn)
    y, _ = jax.jit(lambda x: ode.solve_ode(drift, x, sde.T, eps, rtol=tol, atol=tol,
                                           max_steps=max_steps))(x)
    if denoise:
        y = jax.jit(lambda y: prediction_fn(sde, score_fn, "data")(y, eps))(y)
    return y


def fit_time_grid(sde, score_fn, method: str, nfe: int, eps: float, z_fit, *,
                  time_grid_kind: str | np.ndarray | None = None, order: int = 3,
                  variant: str = "bh2", denoise: bool = False, reference=None,
                  reference_tol: float = 1e-6, max_evals: int | None = None,
                  info: dict | None = None) -> np.ndarray:
    """The time grid (float64, `grid_steps(method, nfe, order, denoise) + 1` times from T to eps)
    on which `method` with `nfe` evaluations maps the latents `z_fit` (B, ...) at T closest (mean
    squared error) to `reference` (default: `reference_flow` of z_fit at `reference_tol`),
    starting from `time_grid_kind`; at most `max_evals` objective evaluations (default 60 per free
    parameter). `info`, if given, receives {'start': grid, 'start_mse', 'mse', 'evals'}."""
    # Derivative-free: Powell's method on log(MSE) over the grid's log-SNR increments
    # h_i = softmax(theta)_i (lambda_eps - lambda_T), so that every candidate is a valid,
    # monotone grid with the ends fixed. Any score_fn (a network or a closed form) works.
    import scipy.optimize

    check_args(method, nfe, time_grid_kind, order, variant, denoise)
    kw = dict(order=order, variant=variant, denoise=denoise)
    steps = grid_steps(method, nfe, order, denoise)
    z_fit = jnp.asarray(z_fit)
    if reference is None:
        reference = reference_flow(sde, score_fn, z_fit, eps, tol=reference_tol, denoise=denoise)
    reference = jnp.asarray(reference, z_fit.dtype)
    run = grid_runner(sde, score_fn, method, nfe, eps, **kw)
    if isinstance(time_grid_kind, str) or time_grid_kind is None:
        kind = time_grid_kind or default_time_grid(method, nfe, order, denoise)
        start = time_grid(sde, kind, steps, eps)
    else:
        start = _grid_array(sde, time_grid_kind, steps, eps)
    sch = _Schedule(sde)
    lam_start = sch.lam(start)
    lam_T, lam_eps = lam_start[0], lam_start[-1]
    theta0 = np.log(np.diff(lam_start) / (lam_eps - lam_T))

    def grid(free):
        theta = np.concatenate([[0.0], free])
        w = np.exp(theta - theta.max())
        lam = lam_T + (lam_eps - lam_T) * np.concatenate([[0.0], np.cumsum(w / w.sum())])
        ts = sch.t(lam)
        ts[0], ts[-1] = sde.T, eps
        return ts

    def mse(ts):
        return float(jnp.mean((run(z_fit, ts) - reference) ** 2))

    evals = [0]

    def objective(free):
        evals[0] += 1
        try:
            ts = grid(free)
            value = mse(ts) if np.all(np.diff(ts) < 0) else np.inf
        except ValueError:  # two times too close to tell apart in float64
            value = np.inf
        return np.log(value) if np.isfinite(value) and value > 0 else 1e6

    free0 = theta0[1:] - theta0[0]
    start_mse = mse(start)
    best = start
    if steps > 1:
        res = scipy.optimize.minimize(
            objective, free0, method="Powell",
            options={"maxfev": max_evals or 60 * len(free0), "xtol": 1e-3, "ftol": 1e-4})
        # Powell returns its best point; keep the start if that is no better (or not finite).
        if objective(res.x) < (np.log(start_mse) if np.isfinite(start_mse) else 1e6):
            best = grid(res.x)
    if info is not None:
        info.update(start=start, start_mse=start_mse, mse=mse(best), evals=evals[0])
    return np.asarray(best, np.float64)


def adaptive_sde(sde, score_fn, x: Array, rng: Array, eps: float, *, rtol=0.05, atol=0.0078,
                 denoise=False, safety=0.9, exponent=0.9, h_init=0.01, max_nfe=10_000):
    """The adaptive reverse-SDE solver of Jolicoeur-Martineau et al. (2021, Alg. 1). Returns (x at
    eps, or D(x, eps) with `denoise`; nfe), nfe counting every attempted step (2 evaluations).
    Raises at run time if eps is not reached within `max_nfe` evaluations."""
    # An Euler-Maruyama step x' and an improved-Euler step x'' with the same noise, accepted when
    # the RMS of (x' - x'') / max(atol, rtol max(|x'|, |x'_prev|)) is <= 1; next step
    # min(t - eps, safety h E^-exponent). The RMS is over the whole batch (one step size for all
    # samples): a per-sample decision would favour the noise draws that move a sample outward
    # (rtol scales the tolerance with |x'|) and inflate the variance (tests).
    import equinox as eqx

    rsde = sde.reverse(score_fn)
    batch = x.shape[0]

    def em(x_from, x_at, t, h, z):
        drift, g = rsde.sde(x_at, jnp.full((batch,), t, x.dtype))
        return x_from - h * drift + batch_mul(g * jnp.sqrt(h), z)

    def cond(state):
        _, _, t, _, _, n = state
        return (t > eps) & (n + 2 <= max_nfe)

    def body(state):
        x, x_prev, t, h, key, n = state
        key, sub = jax.random.split(key)
        z = jax.random.normal(sub, x.shape, x.dtype)
        x1 = em(x, x, t, h, z)
        x2 = 0.5 * (x1 + em(x, x1, t - h, h, z))
        scale = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(x1), jnp.abs(x_prev)))
        err = jnp.sqrt(jnp.mean(((x1 - x2) / scale) ** 2))
        accept = err <= 1.0
        x, x_prev = jnp.where(accept, x2, x), jnp.where(accept, x1, x_prev)
        t = jnp.where(accept, jnp.where(h >= t - eps, eps, t - h), t)
        h = jnp.minimum(t - eps, safety * h * jnp.maximum(err, 1e-10) ** -exponent)
        return x, x_prev, t, h, key, n + 2

    state = (x, x, jnp.asarray(sde.T, x.dtype), jnp.asarray(h_init, x.dtype), rng, jnp.int32(0))
    x, _, t, _, _, nfe = jax.lax.while_loop(cond, body, state)
    x = eqx.error_if(x, t > eps, f"adaptive_sde did not reach eps within {max_nfe} "
                     "evaluations (sampling.rtol / sampling.atol too small?)")
    if denoise:
        x, nfe = prediction_fn(sde, score_fn, "data")(x, eps), nfe + 1
    return x, nfe
