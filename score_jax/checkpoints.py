"""Checkpoints of training runs (orbax), laid out like the official code.

    W/checkpoints/<step>/        every `training.snapshot_freq` steps, all kept
    W/checkpoints-meta/<step>/   every `training.snapshot_freq_for_preemption` steps, newest kept

Each step directory holds one orbax `StandardSave` item, the pytree
`{'params', 'ema_params', 'opt_state', 'step' (int), 'rng' (uint32 (2,))}`. The converter of
official weights (`save_converted`) writes the same layout without `opt_state`
and `rng` under `W/checkpoints/`, so `restore_for_sampling` serves both, and training can start
from converted weights (with a fresh optimizer state).

Atomicity: orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>`
only once every item is committed; a process killed during a save leaves the temporary folder
(ignored by `latest_step`, deleted on the next start) and the previous checkpoints intact.
"""
from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any
SNAPSHOT_DIR = "checkpoints"
PREEMPTION_DIR = "checkpoints-meta"
_TREE_ITEMS = ("params", "ema_params", "opt_state")


def _manager(directory: str, max_to_keep: int | None, read_only: bool = False):
    # A reader sets save_interval_steps=0 itself: orbax warns about it otherwise.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                           read_only=read_only, cleanup_tmp_directories=not read_only,
                                           **({"save_interval_steps": 0} if read_only else {}))
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def _abstract(tree: PyTree, sharding=None) -> PyTree:
    """Shape/dtype (and target sharding) of every leaf of `tree` (arrays or orbax metadata)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpointer:
    """Saves and restores a `TrainState` in the two official folders of `workdir`."""

    def __init__(self, workdir: str):
        self.snapshots = _manager(os.path.join(workdir, SNAPSHOT_DIR), max_to_keep=None)
        self.preemption = _manager(os.path.join(workdir, PREEMPTION_DIR), max_to_keep=1)

    def save(self, state, preemption: bool) -> None:
        """Starts an (asynchronous) save of `state` at `state.step`; returns once the arrays are
        copied off the devices, so the caller may donate `state` afterwards."""
        manager = self.preemption if preemption else self.snapshots
        step = int(state.step)
        if step in manager.all_steps():
            return
        item = {k: getattr(state, k) for k in _TREE_ITEMS}
        item.update(step=step, rng=state.rng)
        manager.save(step, args=ocp.args.StandardSave(item))

    def latest_step(self) -> int | None:
        steps = [s for s in (self.snapshots.latest_step(), self.preemption.latest_step())
                 if s is not None]
        return max(steps) if steps else None

    def restore(self, template):
        """The newest checkpoint of either folder as a state shaped (and sharded) like `template`
        (a `TrainState`), or None when there is none. A converted official checkpoint (no
        optimizer state) keeps the template's fresh `opt_state` and `rng`."""
        step = self.latest_step()
        if step is None:
            return None
        manager = self.preemption if step in self.preemption.all_steps() else self.snapshots
        sharding = jax.tree.leaves(template.params)[0].sharding
        meta = manager.item_metadata(step)
        target = {k: _abstract(getattr(template, k), sharding) for k in _TREE_ITEMS + ("rng",)
                  if k in meta}
        target["step"] = _abstract(meta["step"], sharding)
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
        restored["step"] = jax.device_put(jax.numpy.asarray(step, jax.numpy.int32), sharding)
        return template.replace(**restored)

    def wait(self) -> None:
        """Blocks until pending saves are committed."""
        self.snapshots.wait_until_finished()
        self.preemption.wait_until_finished()

    def close(self) -> None:
        self.snapshots.close()
        self.preemption.close()


def restore_for_sampling(workdir: str, step: int | None = None, sharding=None):
    """`(ema_params, step)` of a training run or of converted official weights in `workdir`.

    Takes `step` from `W/checkpoints/` if given, else the newest checkpoint of `W/checkpoints/`
    and `W/checkpoints-meta/`. Arrays are placed with `sharding` (default: the first device).
    Raises FileNotFoundError when there is no checkpoint.
    """
    managers = [_manager(os.path.join(workdir, d), None, read_only=True)
                for d in (SNAPSHOT_DIR, PREEMPTION_DIR) if os.path.isdir(os.path.join(workdir, d))]
    candidates = [(s, m) for m in managers for s in m.all_steps()
                  if step is None or (s == step and m is managers[0])]
    if not candidates:
        where = f"step {step} in " if step is not None else ""
        raise FileNotFoundError(
            f"no checkpoint ({where}{os.path.join(workdir, SNAPSHOT_DIR)} or "
            f"{os.path.join(workdir, PREEMPTION_DIR)}); train first or convert official weights")
    found, manager = max(candidates, key=lambda c: c[0])
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    # Orbax 0.12 restores whole trees only: the optimizer state of a training checkpoint is read
    # too (placed like the parameters) and dropped.
    target = _abstract(manager.item_metadata(found), sharding)
    restored = manager.restore(found, args=ocp.args.StandardRestore(target))
    return restored["ema_params"], found


def save_converted(workdir, state: dict) -> pathlib.Path:
    """Writes `state` as an orbax checkpoint under `workdir/checkpoints/<step>`; returns that dir.

    Layout (what training and sampling restore): a `CheckpointManager` on `workdir/checkpoints`,
    one `StandardSave` item, the pytree `{'params': tree, 'ema_params': tree, 'step': int}` at
    step `state['step']`, restorable with `mngr.restore(step)` or
    `mngr.restore(step, args=ocp.args.StandardRestore(abstract_tree))`. Directories this call
    created are removed again if writing fails.
    """
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
