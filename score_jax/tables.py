"""`--mode table`: the paper's tables as commands, our number beside the published one.

`table.name`:

* 'pc_solvers' (Table 1; Table 4 with `table.p2000='rounding'`): FID of the predictors ancestral
  sampling, reverse diffusion and probability flow (reverse diffusion of the probability-flow
  ODE) x the columns P1000 (predictor only, N = `model.num_scales` steps), P2000 (2N steps),
  C2000 (corrector only: Langevin, 2 steps at each of N levels, one cell for all predictors) and
  PC1000 (one Langevin step per predictor step). Each cell's signal-to-noise ratio is the
  paper's Table 5 (`TABLE5_SNR`; sub-VP takes VP's) unless `table.snr` overrides it. Discrete-time
  networks know N levels only: P2000 queries level i of the 2N chain at i/2 ('linear') or
  floor(i/2) ('rounding'), as App. G; continuous-time ones simply run 2N steps.
* 'likelihood_ode' (a Table 2 row): test bits/dim (`evaluate.bpd_pass`, `eval.bpd_num_repeats`
  dequantizations as runs) and the FID of probability-flow ODE samples (dopri5, the RK45 pair,
  at rtol = atol = 1e-5).
* 'sample_quality' (a Table 3 row): FID, KID and IS of the config's sampler on every checkpoint
  of `eval.begin_ckpt..eval.end_ckpt`; the best (lowest mean FID) is reported, as the paper does.

Every sampled cell runs `table.runs` runs of `table.num_samples` samples (run r: seed + r) and
reports the FID's mean and std over runs. A cell is a config with `sampling.*` overridden; its
work goes to `W/tables/<name>_ckpt_<step>/<cell>_<key>/` (`settings.json`, `run_<r>/features_<i>
.npz`, `run_<r>/result.json`), `<key>` the `utils.settings_key` of everything that makes its
samples, so a killed table restarts at the first missing round of the first unfinished cell and
other settings never reuse or overwrite it. The table goes to `W/tables/<name>_ckpt_<step>.json`
and `.md` (the newest), and `W/tables/<name>_ckpt_<step>/table_<key>.{json,md}` (kept), each
written atomically at the end. Bad input raises before any sampling.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax.numpy as jnp
import numpy as np
import tqdm

from score_jax import datasets, evaluate, parallel, sampling, utils
from score_jax import sde as sde_lib

log = logging.getLogger(__name__)

TABLES = ("pc_solvers", "likelihood_ode", "sample_quality")
PREDICTORS = ("ancestral_sampling", "reverse_diffusion", "probability_flow")
COLUMNS = ("P1000", "P2000", "C2000", "PC1000")

# The paper's Table 5: the signal-to-noise ratio of each cell with a corrector (C2000: the
# corrector-only column; a predictor: its PC1000 cell).
TABLE5_SNR = {
    "vesde": {"C2000": 0.22, "ancestral_sampling": 0.17, "reverse_diffusion": 0.16,
              "probability_flow": 0.17},
    "vpsde": {"C2000": 0.27, "ancestral_sampling": 0.01, "reverse_diffusion": 0.01,
              "probability_flow": 0.04},
}

# Published FID (mean, std) of Table 1 and Table 4 (its P2000 'rounding' column) for the rows of
# the paper a config is (`paper_row`): CIFAR-10, DDPM network, discrete SMLD / DDPM objectives,
# 5 runs of 50,000 samples. A row per predictor, in each column a value per SDE (VE, VP); C2000
# (the corrector alone) has no predictor.
_T1_SDES = ("vesde", "vpsde")
_T1_COLUMNS = ("P1000", "P2000 linear", "P2000 rounding", "PC1000")
_TABLE1 = {
    "ancestral_sampling": (((4.98, .06), (3.24, .02)), ((4.88, .06), (3.24, .02)),
                           ((4.92, .02), (3.11, .03)), ((3.62, .03), (3.21, .02))),
    "reverse_diffusion": (((4.79, .07), (3.21, .02)), ((4.74, .08), (3.19, .02)),
                          ((4.72, .07), (3.10, .03)), ((3.60, .02), (3.18, .01))),
    "probability_flow": (((15.41, .15), (3.59, .04)), ((10.54, .08), (3.23, .03)),
                         ((12.87, .09), (3.25, .04)), ((3.51, .04), (3.06, .03))),
}
_T1_C2000 = ((20.43, .07), (19.06, .06))
# Table 2: (test bits/dim, FID of ODE samples), last checkpoint.
# Table 3: (FID, IS), best checkpoint.
TABLE2 = {"DDPM": (3.28, 3.37), "DDPM cont. (VP)": (3.21, 3.69),
          "DDPM cont. (sub-VP)": (3.05, 3.56), "DDPM++ cont. (VP)": (3.16, 3.93),
          "DDPM++ cont. (sub-VP)": (3.02, 3.16), "DDPM++ cont. (deep, VP)": (3.13, 3.08),
          "DDPM++ cont. (deep, sub-VP)": (2.99, 2.92)}
TABLE3 = {"DDPM": (3.17, 9.46), "DDPM++": (2.78, 9.64), "DDPM++ cont. (VP)": (2.55, 9.58),
          "DDPM++ cont. (sub-VP)": (2.61, 9.56), "DDPM++ cont. (deep, VP)": (2.41, 9.68),
          "DDPM++ cont. (deep, sub-VP)": (2.41, 9.57), "NCSN++": (2.45, 9.73),
          "NCSN++ cont. (VE)": (2.38, 9.83), "NCSN++ cont. (deep, VE)": (2.20, 9.89)}


def paper_row(config) -> str | None:
    """The paper's name of the CIFAR-10 model `config` describes ('NCSN++ cont. (deep, VE)',
    'SMLD (DDPM network)', ...), or None for a config that is none of the paper's rows."""
    if str(config.data.dataset).upper() != "CIFAR10":
        return None
    name, sde = str(config.model.name), str(config.training.sde).lower()
    cont = bool(config.training.continuous)
    blocks = int(config.model.get("num_res_blocks", 0))
    if name == "ddpm":
        if sde == "vesde":
            return None if cont else "SMLD (DDPM network)"
        kind = {"vpsde": "VP", "subvpsde": "sub-VP"}[sde]
        return f"DDPM cont. ({kind})" if cont else ("DDPM" if sde == "vpsde" else None)
    if name == "ncsnpp" and blocks in (4, 8):
        deep = "deep, " if blocks == 8 else ""
        if sde == "vesde":
            return f"NCSN++ cont. ({deep}VE)" if cont else ("NCSN++" if not deep else None)
        kind = {"vpsde": "VP", "subvpsde": "sub-VP"}[sde]
        return f"DDPM++ cont. ({deep}{kind})" if cont else ("DDPM++" if not deep and sde == "vpsde"
                                                            else None)
    return None


def paper_pc_solvers(config, predictor: str | None, column: str, p2000: str):
    """(mean, std) of Table 1 (p2000 'linear') or 4 ('rounding') for this cell, or None."""
    row = paper_row(config)
    sde = {"SMLD (DDPM network)": "vesde", "DDPM": "vpsde"}.get(row)
    if sde is None:
        return None
    if column == "C2000":
        return _T1_C2000[_T1_SDES.index(sde)]
    column = f"P2000 {p2000}" if column == "P2000" else column
    if predictor not in _TABLE1 or column not in _T1_COLUMNS:
        return None
    return _TABLE1[predictor][_T1_COLUMNS.index(column)][_T1_SDES.index(sde)]


@dataclasses.dataclass
class Cell:
    """One cell: `id` (also its folder's prefix), the config its samples are drawn with (None for
    the bits/dim cell), the reason it cannot run (or None), and what the table prints."""

    id: str
    config: object
    row: str
    column: str
    note: str | None = None
    info: dict = dataclasses.field(default_factory=dict)
    paper: tuple | None = None
    interpolate: str | None = None  # P2000 of a discrete-time network: 'linear' / 'rounding'


def _names(value: str, valid, key: str) -> tuple[list[str], bool]:
    """(names, explicit) of a comma-separated `table.<key>`; '' is all of `valid`."""
    names = [v.strip() for v in str(value or "").split(",") if v.strip()]
    for n in names:
        if n not in valid:
            raise ValueError(f"table.{key}={value!r}: {n!r} is unknown; valid: {list(valid)}")
    return (names, True) if names else (list(valid), False)


def _snr_overrides(spec: str) -> dict:
    """table.snr -> {cell key: snr}: '' none, '0.16' {'*': 0.16}, 'PC1000=0.2,reverse_diffusion/
    PC1000=0.15,C2000=0.3' per column or predictor/column."""
    spec = str(spec or "").strip()
    if not spec:
        return {}
    try:
        return {"*": float(spec)}
    except ValueError:
        pass
    out = {}
    for item in spec.split(","):
        key, _, value = item.strip().partition("=")
        pred, _, col = key.rpartition("/")
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"table.snr={spec!r}: {item!r} is not <column>=<snr> or "
                             "<predictor>/<column>=<snr>") from None
        if col not in ("PC1000", "C2000") or (pred and pred not in PREDICTORS):
            raise ValueError(f"table.snr={spec!r}: {key!r} names no cell with a corrector "
                             f"(columns PC1000, C2000; predictors {list(PREDICTORS)})")
        if out[key] < 0:
            raise ValueError(f"table.snr={spec!r}: {key!r} is negative")
    return out


def _snr(config, predictor, column, overrides) -> tuple[float, str]:
    """(snr, where it comes from) of a cell with a corrector."""
    for key in (f"{predictor}/{column}", column, "*"):
        if key in overrides:
            return overrides[key], f"table.snr ({key})"
    sde = str(config.training.sde).lower()
    source = "Table 5" if sde in TABLE5_SNR else "Table 5, VP (sub-VP is not in the paper)"
    return TABLE5_SNR.get(sde, TABLE5_SNR["vpsde"])["C2000" if column == "C2000" else predictor], \
        source


def _cell_config(config, **sampling_values):
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.eval.num_samples = int(config.table.num_samples)
        for k, v in sampling_values.items():
            if k == "num_scales":
                cfg.model.num_scales = int(v)
            else:
                cfg.sampling[k] = v
    return cfg


def _pc_cells(config) -> list[Cell]:
    predictors, explicit_p = _names(config.table.predictors, PREDICTORS, "predictors")
    columns, explicit_c = _names(config.table.columns, COLUMNS, "columns")
    overrides = _snr_overrides(config.table.snr)
    p2000 = str(config.table.p2000)
    if p2000 not in ("linear", "rounding"):
        raise ValueError(f"table.p2000={p2000!r}; valid: ['linear', 'rounding']")
    n = int(config.model.num_scales)
    continuous = bool(config.training.continuous)
    cells = []
    for column in columns:
        for predictor in ([None] if column == "C2000" else predictors):
            pf = predictor == "probability_flow"
            pred = "none" if predictor is None else ("reverse_diffusion" if pf else predictor)
            corr = "langevin" if column in ("C2000", "PC1000") else "none"
            steps = 2 * n if column == "P2000" else n
            n_steps = 2 if column == "C2000" else 1
            info = {"predictor": pred, "corrector": corr, "probability_flow": pf, "N": steps,
                    "n_steps_each": n_steps if corr != "none" else 0,
                    "nfe": steps * ((pred != "none") + (corr != "none") * n_steps)}
            snr = float(config.sampling.snr)  # unused without a corrector
            info["snr"] = None
            if corr != "none":
                snr, info["snr_source"] = _snr(config, predictor, column, overrides)
                info["snr"] = snr
            cfg = _cell_config(config, method="pc", predictor=pred, corrector=corr, snr=snr,
                               n_steps_each=n_steps, probability_flow=pf, num_scales=steps)
            cell = Cell(id=f"{predictor or 'corrector_only'}_{column}", config=cfg,
                        row=predictor or "corrector only", column=column, info=info,
                        paper=paper_pc_solvers(config, predictor, column, p2000))
            if column == "P2000" and not continuous:
                cell.interpolate = p2000
                info["interpolation"] = p2000
            sde = sde_lib.get_sde(cfg)[0]
            try:
                sampling.check_pc_args(sde, pred, corr, pf, n_steps)
            except ValueError as e:
                cell.note = str(e)
                try:  # the predictor alone, or the column's corrector?
                    sampling.check_pc_args(sde, pred, "none", pf, 1)
                    asked = explicit_c
                except ValueError:
                    asked = explicit_p
                if asked:  # what cannot run was asked for by name: an error
                    raise ValueError(f"table cell {predictor or 'corrector only'} x {column} "
                                     f"cannot run for training.sde={config.training.sde}: {e}") \
                        from None
            cells.append(cell)
    return cells


def _ode_cells(config) -> list[Cell]:
    evaluate.bpd_repeats(config)  # names eval.bpd_dataset when it is unknown
    paper = TABLE2.get(paper_row(config) or "")
    bpd = Cell(id="bpd", config=None, row="bits/dim", column="test bits/dim",
               paper=None if paper is None else (paper[0], None),
               info={"dequantizations": evaluate.bpd_repeats(config),
                     "solver": "dopri5, rtol = atol = 1e-5, eps = 1e-5"})
    cfg = _cell_config(config, method="ode", ode_controller="I")  # the paper's RK45 step control
    fid = Cell(id="ode_fid", config=cfg, row="FID", column="ODE FID",
               paper=None if paper is None else (paper[1], None),
               info={"solver": "dopri5 (RK45), rtol = atol = 1e-5"})
    return [bpd, fid]


def check(config) -> None:
    """Raises ValueError naming the key for bad table input (see `table`), before any work."""
    name = str(config.table.name)
    if name not in TABLES:
        raise ValueError(f"table.name={name!r} is unknown; valid: {list(TABLES)}")
    runs = config.table.runs
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
        raise ValueError(f"table.runs={runs!r} must be an integer >= 1")
    batch = int(config.eval.batch_size)
    parallel.check_batch_size(batch, what="eval.batch_size")
    num = config.table.num_samples
    if not isinstance(num, int) or isinstance(num, bool) or num < 1 or num % batch:
        raise ValueError(f"table.num_samples={num!r} is not a whole number of eval.batch_size="
                         f"{batch} batches")
    stats = config.eval.get("fid_stats_file")
    if stats and not os.path.isfile(os.path.expanduser(stats)):
        raise FileNotFoundError(f"eval.fid_stats_file={stats!r} does not exist")
    if name == "pc_solvers":
        _pc_cells(config)
    elif name == "likelihood_ode":
        _ode_cells(config)


class _HalfLabels:
    """A discrete-time network of N levels asked by a sampler of 2N levels (the paper's App. G):
    label i of the 2N chain becomes i/2 ('linear') or floor(i/2) ('rounding')."""

    def __init__(self, model, mode: str):
        self.model, self.mode = model, mode

    def apply(self, variables, x, labels, train=False, rngs=None):
        labels = jnp.asarray(labels, jnp.float32) / 2
        if self.mode == "rounding":
            labels = jnp.floor(labels)
        return self.model.apply(variables, x, labels, train=train, rngs=rngs)


def _summary(runs: list[dict]) -> dict:
    fids = [r["fid"] for r in runs]
    out = {"fid": float(np.mean(fids)), "fid_std": float(np.std(fids)), "fids": fids,
           "kid": float(np.mean([r["kid"] for r in runs])),
           "is": None if any(r["is"] is None for r in runs) else float(np.mean([r["is"]
                                                                              for r in runs])),
           "runs": len(runs), "num_samples": runs[0]["num_samples"],
           "mean_nfe": float(np.mean([r["mean_nfe"] for r in runs])),
           "wall_s": float(sum(r["wall_s"] for r in runs))}
    return out


def _load(path):
    with open(path) as f:
        return json.load(f)


def _write_json(path, payload):
    if parallel.is_main_process():
        with utils.atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(payload, f, indent=1)


class _Runner:
    """The cells of one checkpoint: their folders, how many rounds are done, running them; one
    progress bar over every round of every cell."""

    def __init__(self, config, workdir, step, restored, cells):
        self.config, self.workdir, self.step, self.cells = config, workdir, step, cells
        self.sde, self.eps, self.model, self.variables, _, self.mesh = restored
        self.main = parallel.is_main_process()
        self.weights = utils.tree_fingerprint(self.variables)
        self.dirs, self.out_dir, self.bar = {}, None, None

    def release(self):
        self.variables = None

    def ensure(self):
        if self.variables is None:
            restored = evaluate.restore(self.config, self.workdir, self.step)
            self.variables = restored[3]

    def attach(self, out_dir, bar):
        """Names every runnable cell's folder under `out_dir` and counts its rounds into `bar`."""
        self.out_dir, self.bar = out_dir, bar
        for c in self.cells:
            if c.note is None:
                self.dirs[c.id] = self.cell_dir(c)
                bar.total += self.rounds(c)
                bar.update(self.done(c))

    def cell_dir(self, cell) -> str:
        if cell.config is None:  # bits/dim: the data, the weights and the likelihood solver
            c = self.config
            settings = {"bpd_dataset": c.eval.bpd_dataset, "repeats": evaluate.bpd_repeats(c),
                        "dequantizer": str(c.eval.get("dequantizer", "uniform")),
                        "batch_size": int(c.eval.batch_size), "seed": int(c.seed),
                        "sde": str(c.training.sde), "step": self.step, "weights": self.weights,
                        **cell.info}
        else:
            settings = sampling.sampler_settings(cell.config, step=self.step,
                                                 weights=self.weights,
                                                 num_samples=int(cell.config.eval.num_samples))
            if cell.interpolate:
                settings["p2000"] = cell.interpolate
        return utils.settings_dir(self.out_dir, cell.id, settings, write=self.main)

    def rounds(self, cell) -> int:
        if cell.config is None:
            return evaluate.bpd_repeats(self.config)
        return int(self.config.table.runs) * (int(self.config.table.num_samples)
                                              // int(self.config.eval.batch_size))

    def done(self, cell) -> int:
        d = self.dirs[cell.id]
        if cell.config is None:
            return sum(os.path.exists(os.path.join(d, f"repeat_{r}.npz"))
                       for r in range(self.rounds(cell)))
        return sum(os.path.exists(os.path.join(d, f"run_{r}", f"features_{i}.npz"))
                   for r in range(int(self.config.table.runs))
                   for i in range(int(self.config.table.num_samples)
                                  // int(self.config.eval.batch_size)))

    def run(self, cell) -> dict:
        self.bar.set_description(f"{cell.id} (ckpt {self.step})")
        self.ensure()
        d = self.dirs[cell.id]
        if cell.config is None:
            return self._bpd(cell, d)
        cfg = cell.config
        batch = int(cfg.eval.batch_size)
        shape = (batch, cfg.data.image_size, cfg.data.image_size, cfg.data.num_channels)
        sde, eps = sde_lib.get_sde(cfg)
        model = _HalfLabels(self.model, cell.interpolate) if cell.interpolate else self.model
        sampling_fn = None
        runs = []
        for r in range(int(self.config.table.runs)):
            path = os.path.join(d, f"run_{r}", "result.json")
            if os.path.exists(path):
                runs.append(_load(path))
                continue
            if sampling_fn is None:
                sampling_fn = sampling.get_sampling_fn(
                    cfg, sde, model, shape, datasets.get_data_inverse_scaler(cfg), eps,
                    sharding=parallel.batch_sharding(self.mesh))
            run_cfg = cfg.copy_and_resolve_references()
            with run_cfg.unlocked():
                run_cfg.seed = int(cfg.seed) + r
            draw = evaluate.draw_fn(run_cfg, sde, eps, model, self.variables, self.step,
                                    self.mesh, sampling_fn)
            start = time.perf_counter()
            # The first run keeps its samples (one grid per round) for a look.
            result = evaluate.sample_quality(run_cfg, self.step, draw,
                                             os.path.join(d, f"run_{r}"),
                                             os.path.join(d, "samples") if r == 0 else None,
                                             progress=self.bar)
            result["wall_s"] = time.perf_counter() - start
            _write_json(path, result)
            runs.append(result)
        return _summary(runs)

    def _bpd(self, cell, d) -> dict:
        passes, fns = [], None
        for r in range(self.rounds(cell)):
            path = os.path.join(d, f"repeat_{r}.npz")
            if not os.path.exists(path):
                fns = fns or evaluate.bpd_fns(self.config, self.sde, self.model, self.workdir,
                                              self.step)
                start = time.perf_counter()
                bpds, nfes, _ = evaluate.bpd_pass(self.config, self.sde, self.model,
                                                  self.variables, self.mesh, r, fns)
                if self.main:
                    with utils.atomic_path(path) as tmp:
                        np.savez(tmp, bpd=bpds, nfe=np.asarray(nfes),
                                 wall_s=time.perf_counter() - start)
                self.bar.update(1)
            with np.load(path) as f:
                passes.append({k: f[k] for k in f})
        means = [float(p["bpd"].mean()) for p in passes]
        every = np.concatenate([p["bpd"] for p in passes])
        return {"bpd": float(every.mean()), "bpd_std": float(np.std(means)), "bpds": means,
                "bpd_stderr": float(every.std() / np.sqrt(len(every))),
                "runs": len(passes), "num_examples": int(len(passes[0]["bpd"])),
                "mean_nfe": float(np.mean([p["nfe"].mean() for p in passes])),
                "wall_s": float(sum(float(p["wall_s"]) for p in passes))}


def _diff(ours, paper):
    return None if ours is None or paper is None else float(ours - paper[0])


def _fmt(mean, std=None, digits=2):
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _cell_json(cell, result, metric="fid") -> dict:
    ours = None if result is None else result[metric]
    return {"id": cell.id, "row": cell.row, "column": cell.column, **cell.info,
            "note": cell.note, "ours": result,
            "paper": None if cell.paper is None else {"mean": cell.paper[0], "std": cell.paper[1]},
            "diff": _diff(ours, cell.paper)}


def _markdown(payload) -> str:
    name, lines = payload["table"], []
    lines.append(f"# {name}: {payload['config_row'] or 'not a row of the paper'}, "
                 f"checkpoint {payload['step']}\n")
    lines.append(f"{payload['protocol']}\n")
    cells = payload["cells"]
    metric_digits = 3 if name == "likelihood_ode" else 2
    if name == "pc_solvers":
        cols = [c for c in COLUMNS if any(x["column"] == c for x in cells)]
        rows = list(dict.fromkeys(x["row"] for x in cells))
        lines.append("| predictor | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        by = {(x["row"], x["column"]): x for x in cells}
        for row in rows:
            texts = []
            for col in cols:
                x = by.get((row, col))
                if x is None:
                    texts.append("")
                elif x["ours"] is None:
                    texts.append("n/a")
                else:
                    texts.append(_fmt(x["ours"]["fid"], x["ours"]["fid_std"]))
            lines.append(f"| {row} | " + " | ".join(texts) + " |")
        lines.append("")
    lines.append("| cell | ours | paper | ours − paper | KID | runs × samples | NFE | snr | "
                 "wall (s) |")
    lines.append("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    notes = []
    for x in cells:
        o, paper = x["ours"], x["paper"]
        paper_text = "—" if paper is None else _fmt(paper["mean"], paper["std"])
        if o is None:
            notes.append(f"* {x['id']}: cannot run: {x['note']}")
            lines.append(f"| {x['id']} | n/a | {paper_text} | — | — | — | — | — | — |")
            continue
        metric = "bpd" if "bpd" in o else "fid"
        ours = _fmt(o[metric], o.get(f"{metric}_std"), metric_digits)
        size = f"{o['runs']} × {o.get('num_samples', o.get('num_examples'))}"
        diff = "—" if x["diff"] is None else f"{x['diff']:+.{metric_digits}f}"
        kid = "—" if "kid" not in o else f"{o['kid']:.4f}"
        snr = "—" if x.get("snr") is None else f"{x['snr']:g}"
        nfe = x.get("nfe", o.get("mean_nfe"))
        lines.append(f"| {x['id']} | {ours} | {paper_text} | {diff} | {kid} | {size} | "
                     f"{nfe:.0f} | {snr} | {o['wall_s']:.0f} |")
    if payload.get("best_step") is not None:
        lines.append(f"\nBest checkpoint: {payload['best_step']} (FID {payload['best']['fid']:.2f}"
                     f", IS {_fmt(payload['best']['is'])}).")
    if notes:
        lines.append("\n" + "\n".join(notes))
    return "\n".join(lines) + "\n"


_PROTOCOL = {
    "pc_solvers": "FID (mean ± std over runs) of PC samplers: predictor × P1000 (N steps), P2000 "
                  "(2N), C2000 (corrector only, 2 Langevin steps per level), PC1000 (1 + 1); the "
                  "paper's Table 1 (P2000 linear) / Table 4 (rounding).",
    "likelihood_ode": "Test bits/dim (uniform dequantization; runs = dequantizations) and FID of "
                      "probability-flow ODE samples (dopri5, rtol = atol = 1e-5); the paper's "
                      "Table 2.",
    "sample_quality": "FID / KID / IS of the config's sampler per checkpoint; the best "
                      "checkpoint is the paper's Table 3 number.",
}


def table(config, workdir: str) -> dict:
    """Runs the table `table.name` (module docstring); returns what it writes to
    `W/tables/<name>_ckpt_<step>.json`."""
    check(config)
    name = str(config.table.name)
    steps = (evaluate.eval_steps(config, workdir) if name == "sample_quality" else [None])
    if name == "sample_quality":
        if config.sampling.get("class_label") is not None:
            raise ValueError("table.name='sample_quality' measures unconditional samples; unset "
                             "sampling.class_label")
    tables_dir = os.path.join(workdir, "tables")
    runners = []
    for s in steps:
        restored = evaluate.restore(config, workdir, s)
        step = restored[4]
        if name == "pc_solvers":
            cells = _pc_cells(config)
        elif name == "likelihood_ode":
            cells = _ode_cells(config)
        else:
            paper = TABLE3.get(paper_row(config) or "")
            cells = [Cell(id=f"ckpt_{step}", config=_cell_config(config), row=f"ckpt {step}",
                          column="FID", paper=None if paper is None else (paper[0], None),
                          info={"step": step, "method": str(config.sampling.method)})]
        runners.append(_Runner(config, workdir, step, restored, cells))
        if len(steps) > 1:
            runners[-1].release()  # one checkpoint's weights in memory at a time
    last = runners[-1].step
    out_dir = os.path.join(tables_dir, f"{name}_ckpt_{last}")
    bar = tqdm.tqdm(total=0, desc=name, unit="round")
    for runner in runners:
        runner.attach(out_dir, bar)
    bar.refresh()
    results = []
    for runner in runners:
        for c in runner.cells:
            results.append((c, None if c.note else runner.run(c)))
        runner.release()
    bar.close()
    payload = {"table": name, "config_row": paper_row(config), "step": last,
               "protocol": _PROTOCOL[name], "runs": int(config.table.runs),
               "num_samples": int(config.table.num_samples),
               "cells": [_cell_json(c, r, "bpd" if c.id == "bpd" else "fid") for c, r in results]}
    if name == "pc_solvers":
        payload["p2000"] = str(config.table.p2000)
    if name == "sample_quality":
        done = [(r["fid"], c.info["step"], r) for c, r in results]
        fid, best_step, best = min(done, key=lambda x: x[0])
        payload["best_step"], payload["best"] = best_step, best
        paper = TABLE3.get(paper_row(config) or "")
        payload["paper"] = None if paper is None else {"fid": paper[0], "is": paper[1]}
        payload["diff"] = None if paper is None else {
            "fid": best["fid"] - paper[0],
            "is": None if best["is"] is None else best["is"] - paper[1]}
    markdown = _markdown(payload)
    key = utils.settings_key({"cells": [x["id"] for x in payload["cells"]],
                              "dirs": sorted(os.path.basename(d) for r in runners
                                             for d in r.dirs.values()),
                              "runs": payload["runs"]})
    for stem in (os.path.join(tables_dir, f"{name}_ckpt_{last}"),
                 os.path.join(out_dir, f"table_{key}")):
        _write_json(stem + ".json", payload)
        if parallel.is_main_process():
            with utils.atomic_path(stem + ".md") as tmp, open(tmp, "w") as f:
                f.write(markdown)
    print(markdown)
    return payload
