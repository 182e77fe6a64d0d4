"""Orbax checkpoints of training runs: `W/checkpoints/<step>/` every `training.snapshot_freq`
steps (all kept), `W/checkpoints-meta/<step>/` for preemption (newest kept). A step holds one
`StandardSave` pytree `{'params', 'ema_params', 'opt_state', 'step', 'rng' (uint32 (2,))}`;
converted weights lack `opt_state` and `rng`. Saves are atomic (temp folder, then rename); restore
skips unreadable or non-finite checkpoints with a warning and uses the newest intact one."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

PyTree = Any
SNAPSHOT_DIR = "checkpoints"
PREEMPTION_DIR = "checkpoints-meta"
_TREE_ITEMS = ("params", "ema_params", "opt_state")
_ITEM = "default"  # the orbax item folder inside a step folder
_TMP_MARK = ".orbax-checkpoint-tmp"
log = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the message ends with the cause."""


def _manager(directory: str, max_to_keep: int | None):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def _abstract(tree: PyTree, sharding=None) -> PyTree:
    """Shape/dtype (and target sharding) of every leaf of `tree` (arrays or orbax metadata)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpointer:
    """Saves and restores a `TrainState` in the two checkpoint folders of `workdir`."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.snapshots = _manager(os.path.join(workdir, SNAPSHOT_DIR), max_to_keep=None)
        self.preemption = _manager(os.path.join(workdir, PREEMPTION_DIR), max_to_keep=1)
        self._last_save = {}  # folder -> step of its latest save (orbax runs one at a time)
        self._reported = False  # a failed save was raised already

    def save(self, state, preemption: bool) -> None:
        """Starts an asynchronous save at `state.step`; `state` may be donated once it returns.
        Raises `CheckpointWriteError` if the previous save failed."""
        self.wait()
        manager = self.preemption if preemption else self.snapshots
        step = int(state.step)
        if step in manager.all_steps():
            return
        item = {k: getattr(state, k) for k in _TREE_ITEMS}
        item.update(step=step, rng=state.rng)
        self._last_save[str(manager.directory)] = step
        try:
            manager.save(step, args=ocp.args.StandardSave(item))
        except Exception as e:  # noqa: BLE001 - a synchronous failure (folder creation, metadata)
            self._failed(e)

    def check(self) -> None:
        """Raises `CheckpointWriteError` if a save has failed; does not wait for one in flight."""
        for manager in (self.snapshots, self.preemption):
            if not manager.is_saving_in_progress():
                try:
                    manager.wait_until_finished()  # returns at once; raises the save's error
                except Exception as e:  # noqa: BLE001 - orbax re-raises the writer's error
                    self._failed(e)

    def _failed(self, error: Exception) -> None:
        self._reported = True
        failed = [(d, s) for d, s in self._last_save.items()
                  if not os.path.isdir(os.path.join(d, str(s)))]
        for manager in (self.snapshots, self.preemption):
            try:
                manager.wait_until_finished()
            except Exception:  # noqa: BLE001 - the error reported below, or its echo
                pass
            _remove_tmp_folders(str(manager.directory))
        where = ", ".join(f"step {s} in {d}" for d, s in failed) or self.workdir
        raise CheckpointWriteError(f"writing the checkpoint ({where}) failed; the earlier "
                                   f"checkpoints are intact. Cause: {_cause(error)}") from error

    def restore(self, template):
        """The newest intact checkpoint shaped and sharded like `template`, or None. Damaged
        newer ones become `<step>.corrupt`; converted weights keep the template's `opt_state`
        and `rng`."""
        sharding = jax.tree.leaves(template.params)[0].sharding

        def target(meta):
            return {k: _abstract(getattr(template, k), sharding)
                    for k in _TREE_ITEMS + ("rng",) if k in meta}

        found = _newest_intact(_candidates(self.workdir), target,
                               set_aside=jax.process_index() == 0)
        self.snapshots.reload()
        self.preemption.reload()
        if found is None:
            return None
        step, restored = found
        restored["step"] = jax.device_put(jnp.asarray(step, jnp.int32), sharding)
        return template.replace(**restored)

    def wait(self) -> None:
        """Blocks until pending saves are committed; raises `CheckpointWriteError` if one failed."""
        for manager in (self.snapshots, self.preemption):
            try:
                manager.wait_until_finished()
            except Exception as e:  # noqa: BLE001
                self._failed(e)

    def close(self) -> None:
        """Waits for pending saves, releases orbax's threads; raises `CheckpointWriteError`."""
        try:
            self.snapshots.close()
            self.preemption.close()
        except Exception as e:  # noqa: BLE001
            if not self._reported:
                self._failed(e)


def _cause(error: BaseException) -> str:
    """The innermost exception's type and first line (orbax wraps the writer's error)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _remove_tmp_folders(directory: str) -> None:
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if _TMP_MARK in name:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True)


def _candidates(workdir: str, folders=(SNAPSHOT_DIR, PREEMPTION_DIR), step: int | None = None):
    """[(step, step folder)] of `folders`, newest first (the first folder first at equal steps)."""
    found = [(s, -i, os.path.join(workdir, d, str(s))) for i, d in enumerate(folders)
             for s in _steps(os.path.join(workdir, d)) if step is None or s == step]
    return [(s, path) for s, _, path in sorted(found, reverse=True)]


def _read(step_dir: str, target_fn) -> dict:
    """The items `target_fn(metadata)` names (a dict of abstract trees) from one step folder."""
    from etils import epath

    item_dir = epath.Path(step_dir) / _ITEM
    if not (item_dir / "_METADATA").exists():
        raise FileNotFoundError(f"{_ITEM}/_METADATA is missing (an incomplete or stray folder)")
    handler = ocp.PyTreeCheckpointHandler()
    meta = handler.metadata(item_dir).tree
    target = target_fn(meta)
    with ocp.Checkpointer(handler) as checkpointer:
        return checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))


def _nonfinite(tree: dict) -> list[str]:
    """Names of the items of `tree` that hold NaN or inf."""
    flags = {k: jax.tree.map(lambda x: jnp.isfinite(x).all(), v) for k, v in tree.items()}
    return [k for k, v in jax.device_get(flags).items() if not all(jax.tree.leaves(v))]


def _newest_intact(candidates, target_fn, set_aside: bool):
    """(step, items) of the first candidate that reads and is finite, or None without candidates;
    raises ValueError listing all when none is intact. `set_aside`: skipped ones -> `.corrupt`."""
    skipped = []
    for step, path in candidates:
        try:
            restored = _read(path, target_fn)
            bad = _nonfinite(restored)
            reason = f"NaN or inf values in {', '.join(bad)}" if bad else None
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
            if not os.path.exists(path):
                continue  # deleted while being read (a rotating preemption checkpoint)
            reason = _cause(e)
        if reason is None:
            for path, _ in skipped if set_aside else ():
                aside = path + ".corrupt"
                while os.path.exists(aside):
                    aside += "_"
                os.rename(path, aside)
                log.warning("damaged checkpoint %s set aside as %s", path, aside)
            return step, restored
        skipped.append((path, f"step {step} in {os.path.dirname(path)} ({reason})"))
        log.warning("checkpoint step %d in %s is damaged and skipped: %s", step,
                    os.path.dirname(path), reason)
    if skipped:
        raise ValueError(f"no intact checkpoint: {'; '.join(d for _, d in skipped)}")
    return None


def latest_intact_step(workdir: str) -> int | None:
    """The newest step of either folder whose parameters and EMA read back finite, or None."""
    try:
        found = _newest_intact(_candidates(workdir), lambda meta: {
            k: _abstract(meta[k], jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
            for k in ("params", "ema_params")}, set_aside=False)
    except ValueError:
        return None
    return None if found is None else found[0]


def restore_for_sampling(workdir: str, step: int | None = None, sharding=None):
    """`(ema_params, step)` from `workdir`: of `step` in `W/checkpoints/` if given, else of the
    newest intact checkpoint of both folders. Placed with `sharding` (default: first device).
    Raises FileNotFoundError without checkpoints, ValueError when none is intact."""
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    folders = (SNAPSHOT_DIR,) if step is not None else (SNAPSHOT_DIR, PREEMPTION_DIR)

    def target(meta):
        return {"ema_params": _abstract(meta["ema_params"], sharding)}

    try:
        found = _newest_intact(_candidates(workdir, folders, step), target, set_aside=False)
    except ValueError:
        # A training run may have committed a newer checkpoint and be deleting the one read.
        found = _newest_intact(_candidates(workdir, folders, step), target, set_aside=False)
    if found is None:
        where = f"step {step} in " if step is not None else ""
        raise FileNotFoundError(
            f"no checkpoint ({where}{os.path.join(workdir, SNAPSHOT_DIR)} or "
            f"{os.path.join(workdir, PREEMPTION_DIR)}); train first or convert official weights")
    found_step, restored = found
    return restored["ema_params"], found_step


def save_converted(workdir, state: dict) -> pathlib.Path:
    """Writes `{'params', 'ema_params', 'step'}` as one `StandardSave` item under
    `workdir/checkpoints/<step>` (removed again if writing fails); returns that directory."""
    ckpt_dir = pathlib.Path(os.path.abspath(workdir)) / "checkpoints"
    created = ckpt_dir
    while not created.parent.exists():
        created = created.parent
    created = created if not created.exists() else None
    item = {"params": state["params"], "ema_params": state["ema_params"],
            "step": int(state["step"])}
    try:
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True)
        with ocp.CheckpointManager(ckpt_dir, options=options) as mngr:
            if item["step"] in mngr.all_steps():
                raise ValueError(f"{ckpt_dir} already holds a checkpoint at step {item['step']}")
            mngr.save(item["step"], args=ocp.args.StandardSave(item))
            mngr.wait_until_finished()
    except BaseException:
        if created is not None and created.exists():
            shutil.rmtree(created)
        raise
    return ckpt_dir / str(item["step"])


# The noise-conditional classifier of `--mode train_classifier`, restored for sampling.
CLASSIFIER_DIR = "classifier"
CLASSIFIER_META = "classifier.json"


def classifier_dir(workdir: str) -> str:
    return os.path.join(workdir, CLASSIFIER_DIR)


def classifier_meta(config) -> dict:
    """What a classifier checkpoint depends on besides its parameter shapes."""
    # The WRN pools over the whole image: its parameters load at any image size.
    c = config.classifier
    return {"classifier.name": c.name, "classifier.blocks_per_group": int(c.blocks_per_group),
            "classifier.channel_multiplier": int(c.channel_multiplier),
            "classifier.num_classes": int(c.num_classes),
            "data.image_size": int(config.data.image_size),
            "data.num_channels": int(config.data.num_channels)}


def check_classifier_meta(config, directory: str) -> None:
    meta_path = os.path.join(directory, CLASSIFIER_META)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"no classifier checkpoint in {directory} (no {CLASSIFIER_META}); "
                                "train one with --mode train_classifier in the same --workdir")
    with open(meta_path) as f:
        saved = json.load(f)
    for key, want in classifier_meta(config).items():
        if saved.get(key) != want:
            raise ValueError(f"the classifier in {meta_path} was trained with {key}="
                             f"{saved.get(key)!r}, the config has {key}={want!r}")


def restore_classifier(config, workdir: str, sharding=None):
    """`(variables, step)`: EMA weights of the newest checkpoint in `W/classifier/`. Raises
    FileNotFoundError naming the folder, or ValueError naming the key of `classifier.json` when it
    was trained for another architecture, image size, channel count or class count."""
    directory = classifier_dir(workdir)
    check_classifier_meta(config, directory)
    params, step = restore_for_sampling(directory, sharding=sharding)
    return {"params": params}, int(step)
