"""`--mode table` (score_jax.tables): the three tables end to end at tiny sizes, a cell resumed
after a kill, and bad input refused before any sampling.

The network is the embedded default's DDPM++ (configs/digits.py, 8x8x1, sub-VP); the Inception
network is replaced by the pixels (as in test_evaluate.py; the network itself is tested in
test_metrics.py), so every FID here is checked against the samples the cells wrote.
"""
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_evaluate import closed_form_bpd, digits_config, pixel_features, write_checkpoint

import main
from score_jax import datasets, metrics, sampling, tables
from score_jax import sde as sde_lib
from score_jax.models import utils as mutils


def table_config(tmp_path, name, **table):
    config = digits_config(tmp_path, batch_size=4, num_samples=4, kid_subsets=2,
                           fid_stats_file=str(tmp_path / "stats.npz"))
    config.model.num_scales = 25  # Langevin on sub-VP needs N > beta_max = 20
    config.table.update({"name": name, "runs": 2, "num_samples": 4, **table})
    return config


@pytest.fixture
def stats(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "get_inception_fn", pixel_features)
    reference = np.random.RandomState(0).randint(0, 256, (10, 2048)).astype(np.float32)
    metrics.save_stats(str(tmp_path / "stats.npz"), reference)
    return metrics.load_stats(str(tmp_path / "stats.npz"))


def fid_of(samples, stats):
    pool = pixel_features()(metrics.samples_to_uint8(samples))["pool_3"]
    return metrics.frechet_distance(*metrics.feature_stats(pool), stats["mu"], stats["sigma"])


def without_wall(payload):
    if isinstance(payload, dict):
        return {k: without_wall(v) for k, v in payload.items() if k != "wall_s"}
    if isinstance(payload, list):
        return [without_wall(v) for v in payload]
    return payload


def test_pc_solvers_table(tmp_path, stats):
    """Sub-VP: ancestral sampling cannot run (said in the table), the others run with Table 5's
    VP snr; each cell's FID is that of the samples of the sampler it names."""
    config = table_config(tmp_path, "pc_solvers", columns="P1000,C2000")
    workdir = str(tmp_path / "w")
    params = write_checkpoint(config, workdir, lambda p: p)
    payload = main.run("table", config, workdir)
    cells = {c["id"]: c for c in payload["cells"]}
    assert sorted(cells) == ["ancestral_sampling_P1000", "corrector_only_C2000",
                             "probability_flow_P1000", "reverse_diffusion_P1000"]
    assert cells["ancestral_sampling_P1000"]["ours"] is None
    assert "not defined for subVPSDE" in cells["ancestral_sampling_P1000"]["note"]
    c2000 = cells["corrector_only_C2000"]
    assert (c2000["snr"], c2000["nfe"], c2000["n_steps_each"]) == (0.27, 50, 2)
    assert c2000["snr_source"].startswith("Table 5, VP")
    assert cells["probability_flow_P1000"]["probability_flow"] is True
    assert payload["config_row"] is None and all(c["paper"] is None for c in cells.values())

    # reverse diffusion, P1000: run 0's samples are those of the PC sampler with its settings.
    (cell_dir,) = glob.glob(os.path.join(workdir, "tables", "pc_solvers_ckpt_7",
                                         "reverse_diffusion_P1000_*"))
    sde, eps = sde_lib.get_sde(config)
    sampler = sampling.get_pc_sampler(sde, mutils.create_model(config), (4, 8, 8, 1),
                                      "reverse_diffusion", "none",
                                      datasets.get_data_inverse_scaler(config), 0.16,
                                      continuous=True, eps=eps)
    expected, _ = sampler(jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 7), 0),
                          {"params": params})
    got = np.load(os.path.join(cell_dir, "samples", "samples_0.npz"))["samples"]
    np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=1e-5)
    run0 = json.load(open(os.path.join(cell_dir, "run_0", "result.json")))
    np.testing.assert_allclose(run0["fid"], fid_of(got, stats), rtol=1e-10)
    ours = cells["reverse_diffusion_P1000"]["ours"]
    runs = [json.load(open(os.path.join(cell_dir, f"run_{r}", "result.json")))["fid"]
            for r in range(2)]
    assert ours["fids"] == runs and runs[0] != runs[1]
    np.testing.assert_allclose([ours["fid"], ours["fid_std"]], [np.mean(runs), np.std(runs)])
    assert ours["runs"] == 2 and ours["num_samples"] == 4 and ours["mean_nfe"] == 50

    saved = json.load(open(os.path.join(workdir, "tables", "pc_solvers_ckpt_7.json")))
    assert saved == json.loads(json.dumps(payload))
    markdown = open(os.path.join(workdir, "tables", "pc_solvers_ckpt_7.md")).read()
    assert "| ancestral_sampling | n/a |" in markdown
    assert "cannot run" in markdown
    assert len(glob.glob(os.path.join(workdir, "tables", "pc_solvers_ckpt_7", "table_*.json"))) == 1


def test_a_killed_table_resumes_at_its_first_missing_round(tmp_path, stats, monkeypatch):
    config = table_config(tmp_path, "pc_solvers", predictors="reverse_diffusion",
                          columns="P1000,PC1000", num_samples=8)
    for w in ("a", "b"):
        write_checkpoint(config, str(tmp_path / w), lambda p: p)
    whole = main.run("table", config, str(tmp_path / "a"))

    calls, kill_at = [], [7]

    class Killed(Exception):
        pass

    def killed(weights=None, batch_size=100):
        fn = pixel_features()

        def wrapped(images):
            calls.append(len(images))
            if len(calls) == kill_at[0]:
                kill_at[0] = None
                raise Killed
            return fn(images)
        return wrapped

    # 2 cells x 2 runs x 2 rounds: killed in the second cell's second run, first round.
    monkeypatch.setattr(metrics, "get_inception_fn", killed)
    with pytest.raises(Killed):
        main.run("table", config, str(tmp_path / "b"))
    assert not glob.glob(str(tmp_path / "b" / "tables" / "*.json"))
    calls.clear()
    resumed = main.run("table", config, str(tmp_path / "b"))
    assert calls == [4, 4]  # the two missing rounds only
    assert without_wall(resumed) == without_wall(whole)
    assert without_wall(json.load(open(tmp_path / "b" / "tables" / "pc_solvers_ckpt_7.json"))) \
        == without_wall(json.loads(json.dumps(whole)))


def test_likelihood_ode_table_matches_the_closed_form(tmp_path, stats):
    """The zero network (score 0): bits/dim has a closed form (test_evaluate.py)."""
    config = table_config(tmp_path, "likelihood_ode", runs=1, num_samples=150)
    config.eval.batch_size = 150
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, jnp.zeros_like)
    payload = main.run("table", config, workdir)
    bpd, fid = payload["cells"]
    assert bpd["id"] == "bpd" and bpd["ours"]["runs"] == 1 and bpd["ours"]["num_examples"] == 300
    np.testing.assert_allclose(bpd["ours"]["bpd"], closed_form_bpd(config), atol=1e-4)
    (cell_dir,) = glob.glob(os.path.join(workdir, "tables", "likelihood_ode_ckpt_7", "ode_fid_*"))
    settings = json.load(open(os.path.join(cell_dir, "settings.json")))
    assert settings["sampling"]["method"] == "ode"
    samples = np.load(os.path.join(cell_dir, "samples", "samples_0.npz"))["samples"]
    np.testing.assert_allclose(fid["ours"]["fid"], fid_of(samples, stats), rtol=1e-10)
    assert fid["ours"]["mean_nfe"] > 5  # an adaptive solve, counted exactly


def test_sample_quality_table_reports_the_best_checkpoint(tmp_path, stats):
    config = table_config(tmp_path, "sample_quality", runs=1)
    config.model.num_scales = 10
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, lambda p: p, step=7)
    write_checkpoint(config, workdir, lambda p: p * 0.5, step=9)
    payload = main.run("table", config, workdir)
    fids = {c["step"]: c["ours"]["fid"] for c in payload["cells"]}
    assert sorted(fids) == [7, 9] and fids[7] != fids[9]
    assert payload["best_step"] == min(fids, key=fids.get)
    assert payload["best"]["fid"] == min(fids.values()) and payload["best"]["is"] is None
    assert os.path.exists(os.path.join(workdir, "tables", "sample_quality_ckpt_9.json"))


def test_p2000_of_a_discrete_network_halves_its_labels():
    seen = []

    class Net:
        def apply(self, variables, x, labels, train=False, rngs=None):
            seen.append(np.asarray(labels))
            return x

    for mode, expected in (("linear", [0.0, 0.5, 999.5]), ("rounding", [0.0, 0.0, 999.0])):
        tables._HalfLabels(Net(), mode).apply({}, jnp.zeros(3), jnp.array([0, 1, 1999]))
        np.testing.assert_array_equal(seen[-1], expected)


def test_paper_rows_and_values():
    from score_jax import config_lib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    load = lambda p: config_lib.load_config(os.path.join(root, "configs", p))
    assert tables.paper_row(load("ve/cifar10_ncsnpp_deep_continuous.py")) == \
        "NCSN++ cont. (deep, VE)"
    assert tables.TABLE3["NCSN++ cont. (deep, VE)"] == (2.20, 9.89)
    assert tables.paper_row(load("subvp/cifar10_ddpmpp_deep_continuous.py")) == \
        "DDPM++ cont. (deep, sub-VP)"
    assert tables.TABLE2["DDPM++ cont. (deep, sub-VP)"] == (2.99, 2.92)
    ve = load("ve/cifar10_ddpm.py")
    assert tables.paper_row(ve) == "SMLD (DDPM network)"
    assert tables.paper_pc_solvers(ve, "reverse_diffusion", "P2000", "linear") == (4.74, .08)
    assert tables.paper_pc_solvers(ve, "reverse_diffusion", "P2000", "rounding") == (4.72, .07)
    assert tables.paper_pc_solvers(ve, None, "C2000", "linear") == (20.43, .07)
    vp = load("vp/ddpm/cifar10.py")
    assert tables.paper_pc_solvers(vp, "probability_flow", "PC1000", "linear") == (3.06, .03)
    assert tables.paper_row(load("digits.py")) is None


@pytest.mark.parametrize("overrides, error, match", [
    ({"name": "table9"}, ValueError, r"table.name='table9' is unknown; valid: \['pc_solvers'"),
    ({"runs": 0}, ValueError, r"table.runs=0 must be an integer >= 1"),
    ({"num_samples": 6}, ValueError, r"table.num_samples=6 is not a whole number of "
                                     r"eval.batch_size=4 batches"),
    ({"predictors": "ancestral_sampling"}, ValueError,
     r"ancestral_sampling x P1000 cannot run for training.sde=subvpsde"),
    ({"predictors": "euler"}, ValueError, r"table.predictors='euler': 'euler' is unknown"),
    ({"columns": "P3000"}, ValueError, r"table.columns='P3000': 'P3000' is unknown"),
    ({"p2000": "cubic"}, ValueError, r"table.p2000='cubic'; valid: \['linear', 'rounding'\]"),
    ({"snr": "PC1000=x"}, ValueError, r"table.snr='PC1000=x': 'PC1000=x' is not"),
    ({"snr": "P1000=0.1"}, ValueError, r"'P1000' names no cell with a corrector"),
])
def test_bad_input_is_refused_before_sampling(tmp_path, stats, monkeypatch, overrides, error,
                                              match):
    config = table_config(tmp_path, "pc_solvers")
    config.table.update(overrides)
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, lambda p: p)
    monkeypatch.setattr(sampling, "get_sampling_fn", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(error, match=match):
        main.run("table", config, workdir)
    assert not os.path.exists(os.path.join(workdir, "tables"))


def test_langevin_with_too_few_levels_is_a_note_or_an_error(tmp_path, stats, monkeypatch):
    """N = 10 <= beta_max: the corrector cells cannot run (the table says why); asking for the
    corrector-only column by name is an error before sampling."""
    config = table_config(tmp_path, "pc_solvers", predictors="reverse_diffusion",
                          columns="C2000")
    config.model.num_scales = 10
    workdir = str(tmp_path / "w")
    write_checkpoint(config, workdir, lambda p: p)
    with pytest.raises(ValueError, match=r"corrector only x C2000 cannot run .* needs N > "
                                         r"beta_max"):
        main.run("table", config, workdir)
    config.table.columns = ""
    cells = tables._pc_cells(config)
    notes = {c.id: c.note for c in cells}
    assert "needs N > beta_max" in notes["reverse_diffusion_PC1000"]
    assert notes["reverse_diffusion_P1000"] is None
