"""The training loop of `--mode train` and `--mode train_classifier`: a mode gives `run` a fresh
state, a `Schedule` and `start(step, restored) -> Task`; the loop owns the lock, stop signals
(`Preempted`), restoring, the non-finite policy, logging and the checkpoint schedule."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from score_jax import checkpoints as ckpt_lib
from score_jax import utils


class Preempted(Exception):
    """Training stopped on a signal after writing a preemption checkpoint; rerun to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Update counts: the run ends at `n_iters`; a device call does `steps_per_call` updates; a
    frequency of 0 turns its action off."""
    n_iters: int
    log_freq: int
    eval_freq: int
    snapshot_freq: int
    preemption_freq: int
    steps_per_call: int = 1


class Task(NamedTuple):
    """What a mode does. `step(state) -> (state, metrics)`: one device call; `metrics` maps names
    to arrays of shape (steps_per_call,) and has `loss` and `finite` (False: that update was not
    applied). `evaluate(state, step) -> row` (or None): logged under `eval/`. `snapshot(state,
    step)` (or None): runs after each snapshot checkpoint."""
    step: Callable[[Any], tuple[Any, dict]]
    evaluate: Callable[[Any, int], dict] | None = None
    snapshot: Callable[[Any, int], None] | None = None


def crossed(before: int, after: int, freq: int) -> bool:
    """Whether a multiple of `freq` lies in (before, after]."""
    return freq > 0 and after // freq > before // freq


def evals_before(step: int, steps_per_call: int, eval_freq: int) -> int:
    """How many evaluations a run has done before update `step` (to replay an eval stream)."""
    return sum(crossed(k, k + steps_per_call, eval_freq) for k in range(0, step, steps_per_call))


def json_number(v) -> float | None:
    """JSON has no NaN/inf: those are written as null."""
    v = float(v)
    return v if math.isfinite(v) else None


class MetricsLog:
    """`<dir>/metrics.jsonl` (process 0), one JSON object per logged step; on resume, rows at or
    after the resumed step are dropped so the file is one trajectory."""

    def __init__(self, directory: str, start_step: int, enabled: bool):
        self.path = os.path.join(directory, "metrics.jsonl")
        self.enabled = enabled
        if enabled and os.path.exists(self.path):
            with open(self.path) as f:
                rows = [line for line in f if line.strip()]
            keep = []
            for line in rows:
                try:
                    row = json.loads(line)
                    # Train rows carry the update's index, eval rows the number of updates done.
                    if row["step"] < start_step + ("eval_loss" in row):
                        keep.append(line)
                except (json.JSONDecodeError, KeyError):
                    pass  # a line cut by a kill
            with open(self.path, "w") as f:
                f.writelines(keep)

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def stop_requests():
    """Yields a list that SIGTERM and SIGINT append their number to (the loop then stops after
    the current call); a second signal interrupts at once. Outside the main thread, no handler."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        received.append(signum)
        logging.getLogger(__name__).warning(
            "%s: stopping after the current step with a preemption checkpoint (send it again "
            "to stop at once)", signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_signal(received: list) -> int:
    """The signal every process stops for (0: none); all processes agree on the step."""
    signum = received[0] if received else 0
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        signum = int(np.max(multihost_utils.process_allgather(np.int32(signum))))
    return signum


def run(directory: str, state, schedule: Schedule, start: Callable[[int, bool], Task], *,
        skip_nonfinite: bool = False, batch_size: int = 0, what: str = "step") -> dict:
    """Trains in `directory` to `schedule.n_iters` updates, resuming from its newest intact
    checkpoint into `state`, holding `<directory>/train.lock`; returns the last logged train row and
    `updates`. Raises `Preempted` on SIGTERM/SIGINT, FloatingPointError on a non-finite update
    unless `skip_nonfinite`, RuntimeError when another process holds the lock."""
    utils.check_workdir(directory)
    lock = utils.workdir_lock(directory) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock, stop_requests() as stop:
        return _run(directory, state, schedule, start, stop, skip_nonfinite, batch_size, what)


def _run(directory, state, schedule, start, stop, skip_nonfinite, batch_size, what):
    s = schedule
    is_main = jax.process_index() == 0
    checkpointer = ckpt_lib.Checkpointer(directory)
    restored = checkpointer.restore(state)
    state = restored if restored is not None else state
    step = int(state.step)
    task = start(step, restored is not None)

    writer = None
    if is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(directory, "tensorboard"))
    metrics_log = MetricsLog(directory, step, is_main)
    from tqdm import tqdm
    bar = tqdm(total=s.n_iters, initial=step, disable=not is_main, unit="step", dynamic_ncols=True)
    log = logging.getLogger(__name__)

    def log_row(row: dict, prefix: str) -> None:
        metrics_log.write(row)
        if writer is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    writer.add_scalar(f"{prefix}/{k.removeprefix('eval_')}", v, row["step"])

    last, skipped = {}, 0
    tick, tick_step = time.perf_counter(), step
    try:
        while step < s.n_iters:
            state, metrics = task.step(state)
            metrics = jax.device_get(metrics)
            checkpointer.check()
            finite = np.asarray(metrics["finite"])
            for i in np.flatnonzero(~finite):
                bad = (f"{what} {step + int(i)}: the loss ({metrics['loss'][i]}), the gradient "
                       "norm or the update's norm is not finite")
                if not skip_nonfinite:
                    checkpointer.wait()
                    good = ckpt_lib.latest_intact_step(directory)
                    raise FloatingPointError(
                        f"{bad}; the update was not applied and nothing after it is saved. Last "
                        "finite checkpoint (checked): "
                        f"{f'step {good} in {directory}' if good is not None else 'none yet'}. "
                        "Lower the learning rate, or set training.skip_nonfinite=True to skip "
                        "such batches")
                log.warning("%s; update skipped (training.skip_nonfinite)", bad)
            before, step = step, step + s.steps_per_call
            bar.update(s.steps_per_call)
            now = time.perf_counter()
            rate = (step - tick_step) / max(now - tick, 1e-9)
            for i in range(s.steps_per_call):
                skipped += int(not finite[i])
                if (before + i) % s.log_freq:
                    continue
                last = {"step": before + i,
                        **{k: json_number(v[i]) for k, v in metrics.items() if k != "finite"},
                        "steps_per_s": rate, "images_per_s": rate * batch_size}
                if skip_nonfinite:
                    last["nonfinite_skipped"], skipped = skipped, 0
                log_row(last, "train")
                if last["loss"] is not None:
                    bar.set_postfix({k: f"{last[k]:.4g}" for k in ("loss", "accuracy")
                                     if last.get(k) is not None})
                tick, tick_step = now, step
            if task.evaluate is not None and crossed(before, step, s.eval_freq):
                row = task.evaluate(state, step)
                log_row({"step": step, **{k: json_number(v) for k, v in row.items()}}, "eval")
            snapshot = crossed(before, step, s.snapshot_freq) or step >= s.n_iters
            signum = stop_signal(stop)
            if (crossed(before, step, s.preemption_freq) or signum) and not snapshot:
                checkpointer.save(state, preemption=True)
            if snapshot:
                checkpointer.save(state, preemption=False)
                if task.snapshot is not None:
                    task.snapshot(state, step)
            if signum and step < s.n_iters:
                checkpointer.wait()
                raise Preempted(
                    f"stopped by {signal.Signals(signum).name} after {what} {step}; its "
                    f"checkpoint is written in {directory}: run the same command to resume",
                    signum)
        checkpointer.wait()
    finally:
        bar.close()
        checkpointer.close()
        if writer is not None:
            writer.close()
    return {**last, "updates": step}
