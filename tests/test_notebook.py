"""notebooks/walkthrough.ipynb executed top to bottom (nbclient, a fresh kernel), on tiny settings:
the digits DDPM++ with random weights, N = 50 levels, a batch of 10 and a classifier trained for
one step. The README's Python examples live in that notebook."""
import json
import os
import re

import jax
import nbformat
import numpy as np
from nbclient import NotebookClient

from score_jax import checkpoints as ckpt_lib
from score_jax import config_lib, train_classifier
from score_jax.models import utils as mutils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "walkthrough.ipynb")


def test_walkthrough_notebook_runs_every_cell(tmp_path, monkeypatch):
    # Langevin on sub-VP needs N > beta_max (= 20): N = 50.
    overrides = {"model.num_scales": 50, "data.data_dir": str(tmp_path / "tfds"),
                 "classifier.channel_multiplier": 1, "classifier.n_iters": 1,
                 "classifier.batch_size": 8, "classifier.eval_freq": 0}
    config = config_lib.load_config(os.path.join(ROOT, "configs", "digits.py"), overrides)
    workdir = str(tmp_path / "w")
    params = mutils.init_model(jax.random.PRNGKey(0), config)["params"]
    ckpt_lib.save_converted(workdir, {"params": params, "ema_params": params, "step": 7})
    train_classifier.train_classifier(config, workdir)

    monkeypatch.setenv("WALKTHROUGH_WORKDIR", workdir)
    monkeypatch.setenv("WALKTHROUGH_BATCH", "10")
    monkeypatch.setenv("WALKTHROUGH_OVERRIDES", json.dumps(overrides))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    figures = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert "checkpoint step 7, subVPSDE with N = 50, samples of shape (10, 8, 8, 1)" in text
    assert "PC samples, NFE 100" in text  # N x (predictor + corrector)
    assert float(re.search(r"test bits/dim ([\d.]+)", text).group(1)) > 0
    assert float(re.search(r"max \|error\| (\S+) on", text).group(1)) < 1e-2
    assert float(re.search(r"known pixels kept to (\S+)", text).group(1)) < 1e-3
    assert "colorization skipped: the model has 1 channel(s)" in text
    assert "class-conditional samples (classifier step 1, scale 3.0)" in text
    # PC, ODE, encode/decode, inpainting, class-conditional.
    assert len(figures) == 5 and np.all([len(c.outputs) >= 1 for c in code[2:]])
