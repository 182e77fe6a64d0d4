"""Entry point: `python main.py --config CONFIG --workdir DIR --mode MODE`.

Kept short on purpose: every mode is one call into an importable, tested function of `score_jax`.
Any config key can be overridden on the command line, e.g. `--config.training.batch_size=8`.
A multi-process run starts the distributed runtime first, for every mode (`score_jax.parallel`).
"""
import importlib
import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from score_jax import utils

# mode -> "module:function"; the function is called as fn(config, workdir, **mode flags).
MODES = {
    "convert": "score_jax.convert:convert",
    "sample": "score_jax.evaluate:sample",
    "likelihood": "score_jax.evaluate:likelihood",
    "eval": "score_jax.evaluate:evaluate",
    "fid_stats": "score_jax.evaluate:fid_stats",
    "train": "score_jax.train:train",
    "train_classifier": "score_jax.train_classifier:train_classifier",
    "train_dequantizer": "score_jax.dequantizer:train_dequantizer",
    "nfe_sweep": "score_jax.sweep:nfe_sweep",
    "table": "score_jax.tables:table",
    "fit_grid": "score_jax.fit_grid:fit_grid",
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
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process runs: host:port of process 0 (else JAX_COORDINATOR_ADDRESS, or "
                    "the launcher jax detects: SLURM, Open MPI, Cloud TPU, Kubernetes).")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
flags.DEFINE_integer("distributed_timeout", 300,
                     "Seconds to wait for all processes to reach the coordinator.")
flags.mark_flags_as_required(["config", "workdir", "mode"])


def run(mode: str, config, workdir: str, **mode_flags):
    """Runs `mode`; raises ValueError naming the valid modes for an unknown one.

    `train` with `training.final_eval` (our key; the main job sets it) ends a completed run with
    `eval` on its last checkpoint and returns the eval's numbers prefixed `final_`.
    Before any work: the config is validated, the workdir proven writable, and the keys that
    define the model and SDE compared with `W/config.json` (`score_jax.config_lib`).
    """
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r} is unknown; valid modes: {', '.join(sorted(MODES))}")
    from score_jax import config_lib, utils

    config_lib.validate(config)
    utils.check_workdir(workdir)
    if mode in ("train", "sample", "likelihood", "eval", "table", "train_dequantizer",
                "fit_grid"):
        config_lib.check_workdir_config(config, workdir, record=mode == "train")
    module, fn = MODES[mode].split(":")
    result = getattr(importlib.import_module(module), fn)(config, workdir, **mode_flags)
    if (mode == "train" and config.training.get("final_eval", False)
            and result.get("updates", 0) >= config.training.n_iters):
        from score_jax import evaluate

        final = evaluate.evaluate(config, workdir, result["updates"])  # the last snapshot
        result = {**result, **{f"final_{k}": v for k, v in final.items()}}
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    utils.enable_compilation_cache(FLAGS.compilation_cache)
    if not FLAGS["verbosity"].present:
        # orbax logs every checkpoint operation at INFO (and benign notes at WARNING, e.g. on
        # read-only restores), tfds a note about OpenCV; keep our own progress messages.
        logging.set_verbosity(logging.ERROR)
        py_logging.getLogger("score_jax").setLevel(py_logging.INFO)
    if FLAGS.mode not in MODES:
        raise app.UsageError(f"--mode={FLAGS.mode!r} is unknown; valid modes: "
                             f"{', '.join(sorted(MODES))}")
    from score_jax import parallel

    try:
        parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                            timeout_s=FLAGS.distributed_timeout)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    mode_flags = {"checkpoint": FLAGS.checkpoint} if FLAGS.mode == "convert" else {}
    from score_jax.loop import Preempted

    try:
        run(FLAGS.mode, FLAGS.config, FLAGS.workdir, **mode_flags)
    except Preempted as e:
        logging.error("%s", e)
        sys.exit(128 + e.signum)


def parse_flags(argv):
    """absl's parsing; an unknown `--config.<key>` override is reported by name."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError):
        path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
        if path is None:
            raise
        from score_jax import config_lib

        config = config_lib.load_config(path)
        for key in keys:
            try:
                config_lib.check_key(config, key)
            except ValueError as e:
                sys.exit(f"FATAL Flags parsing error: --config.{key}: {e}")
        raise


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
