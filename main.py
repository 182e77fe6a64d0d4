"""Entry point: `python main.py --config CONFIG --workdir DIR --mode MODE`.

Kept short on purpose: every mode is one call into an importable, tested function of `score_jax`.
Any config key can be overridden on the command line, e.g. `--config.training.batch_size=8`.
"""
import importlib
import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

from score_jax import utils

# mode -> "module:function"; the function is called as fn(config, workdir, **mode flags).
MODES = {
    "convert": "score_jax.convert:convert",
    "sample": "score_jax.evaluate:sample",
    "likelihood": "score_jax.evaluate:likelihood",
    "eval": "score_jax.evaluate:evaluate",
    "train": "score_jax.train:train",
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (e.g. configs/digits.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Working directory: checkpoints, logs, samples.")
flags.DEFINE_string("mode", None, "What to run; one of the modes listed in README.md.")
flags.DEFINE_string("checkpoint", None, "--mode convert: the official checkpoint file to convert.")
flags.DEFINE_string("compilation_cache", None,
                    "jax compilation cache directory (default: $SCORE_JAX_COMPILATION_CACHE, else "
                    "~/.cache/score_jax/jax); '' disables it.")
flags.mark_flags_as_required(["config", "workdir", "mode"])


def run(mode: str, config, workdir: str, **mode_flags):
    """Runs `mode`; raises ValueError naming the valid modes for an unknown one."""
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r} is unknown; valid modes: {', '.join(sorted(MODES))}")
    module, fn = MODES[mode].split(":")
    return getattr(importlib.import_module(module), fn)(config, workdir, **mode_flags)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    utils.enable_compilation_cache(FLAGS.compilation_cache)
    if not FLAGS["verbosity"].present:
        # orbax logs every checkpoint operation at INFO (and benign notes at WARNING, e.g. on
        # read-only restores), tfds a note about OpenCV; keep our own progress messages.
        logging.set_verbosity(logging.ERROR)
        py_logging.getLogger("score_jax").setLevel(py_logging.INFO)
    mode_flags = {"checkpoint": FLAGS.checkpoint} if FLAGS.mode == "convert" else {}
    try:
        run(FLAGS.mode, FLAGS.config, FLAGS.workdir, **mode_flags)
    except ValueError as e:
        if FLAGS.mode not in MODES:
            raise app.UsageError(str(e)) from None
        raise


if __name__ == "__main__":
    app.run(main)
