"""Faults a long run meets, one test per case of README's "Faults and what happens" table: each
asserts the message and that nothing was lost. Tiny network (tests/test_train.py's TinyNet) on
DIGITS; a subprocess only where a signal or a second process is the point."""
import json
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_train import _committed_steps, _digits_tiny_config, tiny_config

import main
from score_jax import checkpoints as ckpt_lib
from score_jax import config_lib, datasets, digits, parallel, train, utils
from score_jax.models import register_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


@register_model(name="wide_test_net")
class WideNet(nn.Module):
    """A net whose checkpoint is larger than 64 KiB (37k parameters per tree)."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x, labels, train=False):
        h = nn.Conv(64, (3, 3))(x)
        h = nn.Conv(64, (3, 3))(nn.swish(h))
        return nn.Conv(x.shape[-1], (3, 3))(nn.swish(h))  # ignores the time: not the point


def _config(**training):
    config = _digits_tiny_config(**training)
    config.allow_config_change = False
    return config


def _rows(workdir):
    """metrics.jsonl, parsed strictly (a bare NaN or Infinity is not JSON)."""
    def refuse(constant):
        raise ValueError(f"{constant} in metrics.jsonl")

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def _ema(workdir, step=None):
    ema, found = ckpt_lib.restore_for_sampling(str(workdir), step=step)
    return jax.device_get(ema), found


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


# 1. Non-finite updates.

def test_nonfinite_update_is_not_applied_and_a_finite_checkpoint_is_named(tmp_path):
    w = str(tmp_path)
    main.run("train", _config(n_iters=2), w)
    kept, _ = _ema(w)
    # An infinite learning rate makes every update non-finite (a divergence, reached at once).
    diverging = _config(n_iters=4)
    diverging.optim.lr = float("inf")
    with pytest.raises(FloatingPointError,
                       match=r"step 2: the loss .* not finite; the update was not applied and "
                             r"nothing after it is saved\. Last finite checkpoint \(checked\): "
                             r"step 2 in "):
        train.train(diverging, w)
    assert _committed_steps(tmp_path / "checkpoints-meta") == [1]
    assert _committed_steps(tmp_path / "checkpoints") == [2]
    _assert_same(_ema(w)[0], kept)

    # training.skip_nonfinite: the run goes on, the weights stay, the rows count the skips.
    diverging.training.skip_nonfinite = True
    result = train.train(diverging, w)
    assert result["updates"] == 4
    _assert_same(_ema(w)[0], kept)
    rows = [r for r in _rows(w) if "loss" in r]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [r.get("nonfinite_skipped") for r in rows[2:]] == [1, 1]
    assert rows[2]["lr"] is None  # inf is written as null: the file stays JSON


# 2. A checkpoint cannot be written.

def test_failed_checkpoint_write_stops_at_once_and_keeps_the_earlier_ones(tmp_path):
    w = str(tmp_path)
    config = _config(n_iters=2, snapshot_freq=2, snapshot_freq_for_preemption=3)
    config.model.name = "wide_test_net"
    main.run("train", config, w)
    kept, _ = _ema(w)
    config.training.n_iters = 9
    # A full disk, as `ulimit -f` makes it: files may not grow past 64 KiB, a checkpoint must.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(ckpt_lib.CheckpointWriteError,
                           match=r"writing the checkpoint \(step 3 in .*checkpoints-meta\) failed; "
                                 r"the earlier checkpoints are intact\. Cause: .*File too large"):
            train.train(config, w)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    # Stopped within one save: the save at step 6 never started.
    assert max(r["step"] for r in _rows(w) if "loss" in r) < 6
    for folder in ("checkpoints", "checkpoints-meta"):
        assert [n for n in os.listdir(tmp_path / folder) if not n.isdigit()] == []
    assert _committed_steps(tmp_path / "checkpoints") == [2]
    assert _committed_steps(tmp_path / "checkpoints-meta") == []
    _assert_same(_ema(w, step=2)[0], kept)


# 3. Concurrent runs.

def test_second_trainer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    w = str(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock = {"host": socket.gethostname(), "pid": holder.pid, "since": "earlier"}
        (tmp_path / utils.LOCK_FILE).write_text(json.dumps(lock))
        with pytest.raises(RuntimeError, match=rf"in use by another training run: process "
                                               rf"{holder.pid} on host {socket.gethostname()}"):
            main.run("train", _config(n_iters=1), w)
        assert not (tmp_path / "checkpoints").exists()
        assert json.loads((tmp_path / utils.LOCK_FILE).read_text()) == lock
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and taken over; the run releases it at the end.
    with caplog.at_level(logging.WARNING, logger="score_jax.utils"):
        assert main.run("train", _config(n_iters=1), w)["updates"] == 1
    assert f"from process {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert not (tmp_path / utils.LOCK_FILE).exists()


def test_sampling_passes_over_a_checkpoint_deleted_while_it_is_read(tmp_path, monkeypatch):
    """A training run rotates `checkpoints-meta/` under a concurrent `sample`: the reader takes the
    newest checkpoint that is still there."""
    w = str(tmp_path)
    state = train.create_train_state(tiny_config(), parallel.make_mesh())
    ck = ckpt_lib.Checkpointer(w)
    for step, preemption in ((2, False), (3, True)):
        ck.save(state.replace(step=jnp.asarray(step, jnp.int32)), preemption=preemption)
    ck.wait()
    ck.close()
    read = ckpt_lib._read

    def read_while_rotated(step_dir, target_fn):
        if step_dir.endswith(os.path.join("checkpoints-meta", "3")):
            import shutil
            shutil.rmtree(os.path.join(step_dir, "default"))  # the trainer deletes as we read
            shutil.rmtree(step_dir)
        return read(step_dir, target_fn)

    monkeypatch.setattr(ckpt_lib, "_read", read_while_rotated)
    _, step = _ema(w)
    assert step == 2


# 4. Damaged checkpoints.

def test_damaged_newest_checkpoints_are_skipped_and_named(tmp_path, caplog):
    w = str(tmp_path)
    config = _config(n_iters=3, snapshot_freq=1)
    main.run("train", config, w)
    kept, _ = _ema(w, step=1)
    ckpts = tmp_path / "checkpoints"
    (ckpts / "99").mkdir()  # a stray empty folder
    (ckpts / "3" / "default" / "_METADATA").unlink()  # a missing metadata file
    data = [p for p in (ckpts / "2" / "default").rglob("*") if p.is_file() and "/d/" in str(p)]
    for p in data:  # truncated array files
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    with caplog.at_level(logging.WARNING, logger="score_jax.checkpoints"):
        ema, step = _ema(w)
    assert step == 1
    _assert_same(ema, kept)
    warnings = [r.getMessage() for r in caplog.records]
    for s, why in ((99, "_METADATA is missing"), (3, "_METADATA is missing"), (2, "Error")):
        assert any(m.startswith(f"checkpoint step {s} in {ckpts} is damaged and skipped: ")
                   and why in m for m in warnings), (s, warnings)

    # Training resumes from step 1, sets the damaged ones aside, and writes steps 2 and 3 anew.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="score_jax.checkpoints"):
        main.run("train", config, w)
    assert "set aside as" in caplog.text
    assert _committed_steps(ckpts) == [1, 2, 3]
    assert sorted(n for n in os.listdir(ckpts) if not n.isdigit()) == [
        "2.corrupt", "3.corrupt", "99.corrupt"]

    # Sampling reads only the EMA weights: a checkpoint whose optimizer state is NaN serves it,
    # training refuses it.
    state = train.create_train_state(config, parallel.make_mesh())
    state = state.replace(step=jnp.asarray(7, jnp.int32),
                          opt_state=jax.tree.map(lambda x: x * jnp.nan if x.dtype == jnp.float32
                                                 else x, state.opt_state))
    ck = ckpt_lib.Checkpointer(str(tmp_path / "nan_opt"))
    ck.save(state, preemption=False)
    ck.wait()
    ck.close()
    assert _ema(tmp_path / "nan_opt")[1] == 7
    with pytest.raises(ValueError, match=r"no intact checkpoint: step 7 .*NaN or inf values in "
                                         r"opt_state"):
        ckpt_lib.Checkpointer(str(tmp_path / "nan_opt")).restore(state)


# 5. SIGTERM.

def test_sigterm_writes_a_checkpoint_and_the_resumed_run_is_bit_identical(tmp_path):
    n = 300
    cfg = tmp_path / "tiny_config.py"
    cfg.write_text(f"import sys\nsys.path.insert(0, {TESTS!r})\n"
                   "from test_train import _digits_tiny_config\n\n\n"
                   "def get_config():\n"
                   f"    c = _digits_tiny_config(n_iters={n}, snapshot_freq_for_preemption=1000,\n"
                   "                            snapshot_freq=1000, eval_freq=50)\n"
                   "    c.allow_config_change = False\n    return c\n")
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")

    def run(workdir):
        return subprocess.Popen([sys.executable, "main.py", f"--config={cfg}",
                                 f"--workdir={workdir}", "--mode=train"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    proc = run(stopped)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (
            (stopped / "metrics.jsonl").exists() and (stopped / "metrics.jsonl").stat().st_size):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    at = _committed_steps(stopped / "checkpoints-meta")
    assert len(at) == 1 and 0 < at[0] < n, out[-3000:]
    assert f"stopped by SIGTERM after step {at[0]}; its checkpoint is written" in out
    assert _committed_steps(stopped / "checkpoints") == []

    for p in (run(stopped), run(ref)):
        out, _ = p.communicate(timeout=1800)
        assert p.returncode == 0, out[-3000:]
    def numbers(workdir):  # every logged number but the timings
        return [{k: v for k, v in r.items() if not k.endswith("per_s")} for r in _rows(workdir)]

    assert numbers(stopped) == numbers(ref) and len(numbers(ref)) == n + n // 50
    _assert_same(_ema(stopped)[0], _ema(ref)[0])


# 6. Config drift.

def test_changed_model_or_sde_is_refused_naming_each_key(tmp_path):
    w = str(tmp_path)
    main.run("train", _config(n_iters=1), w)
    recorded = (tmp_path / "config.json").read_text()
    assert json.loads(recorded)["training"]["sde"] == "vpsde"
    kept, _ = _ema(w)

    changed = _config(n_iters=2)
    changed.training.sde = "subvpsde"
    changed.model.beta_max = 10.0
    changed.optim.lr = 1e-4  # not a model or SDE key: may change
    for mode in ("train", "sample", "likelihood", "eval"):
        with pytest.raises(ValueError, match=r"differs from the one .* was trained with: "
                                             r"model\.beta_max: 20\.0 in .*config\.json, "
                                             r"10\.0 now; "
                                             r"training\.sde: 'vpsde' in .*, 'subvpsde' now\. "
                                             r".*--config\.allow_config_change=True"):
            main.run(mode, changed, w)
    assert (tmp_path / "config.json").read_text() == recorded
    assert _committed_steps(tmp_path / "checkpoints") == [1]
    _assert_same(_ema(w)[0], kept)

    changed.allow_config_change = True  # fine-tuning: accepted, and recorded
    assert main.run("train", changed, w)["updates"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["training"]["sde"] == "subvpsde"


# 7. Read-only workdir.

def test_read_only_workdir_is_refused_before_any_work(tmp_path, monkeypatch):
    w = tmp_path / "w"
    main.run("train", _config(n_iters=1), str(w))
    before = sorted(str(p) for p in w.rglob("*"))
    w.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: put a folder where the write probe goes
        (w / f".write_test_{os.getpid()}").mkdir()
        before.append(str(w / f".write_test_{os.getpid()}"))
    computed = []
    monkeypatch.setattr("score_jax.evaluate.restore", lambda *a: computed.append(a))
    try:
        for mode in ("likelihood", "sample", "eval", "train"):
            with pytest.raises(PermissionError,
                               match=re.escape(f"--workdir='{w}' is not writable")):
                main.run(mode, _config(n_iters=2), str(w))
    finally:
        w.chmod(0o755)
    assert computed == []
    assert sorted(str(p) for p in w.rglob("*")) == sorted(before)


# 8. Config validation.

@pytest.mark.parametrize("key,value,valid", [
    ("training.n_iters", 0, "an integer >= 1"),
    ("sampling.snr", -0.16, r"a finite number in \[0, inf\]"),
    ("optim.lr", -1e-3, r"a finite number in \(0, inf\]"),
    ("model.ema_rate", 1.5, r"a finite number in \[0, 1\]"),
    ("training.batch_size", 0, "an integer >= 1"),
    ("training.n_jitted_steps", 0, "an integer >= 1"),
    ("training.log_freq", 0, "an integer >= 1"),
    ("model.num_scales", 0, "an integer >= 1"),
    ("eval.num_samples", 0, "an integer >= 1"),
])
def test_invalid_config_value_is_named_before_any_folder(tmp_path, key, value, valid):
    config = _config()
    config.sampling = dict(snr=0.16)
    config.eval.num_samples = 8
    section, leaf = key.split(".")
    config[section][leaf] = value
    with pytest.raises(ValueError, match=rf"^{key}={value!r} is invalid: expected {valid}$"):
        main.run("train", config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_unknown_config_key_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key 'training\.foo': training has no "
                                         r"field 'foo'; its fields: batch_size, "):
        config_lib.load_config(os.path.join(ROOT, "configs", "digits.py"), {"training.foo": 1})
    out = subprocess.run([sys.executable, "main.py", "--config=configs/digits.py",
                          f"--workdir={tmp_path / 'w'}", "--mode=train", "--config.training.foo=1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith(
        "FATAL Flags parsing error: --config.training.foo: unknown config key 'training.foo'")
    assert not (tmp_path / "w").exists()


# 9. Concurrent dataset preparation.

def test_concurrent_first_use_of_digits_prepares_it_once(tmp_path, monkeypatch):
    """Two preparations of one fresh data dir that overlap (as two hosts on a shared filesystem
    do): both succeed and read the same data."""
    both_inside = threading.Barrier(2, timeout=120)
    generate = digits.Digits._generate_examples

    def generate_together(self, indices):
        both_inside.wait()
        yield from generate(self, indices)

    monkeypatch.setattr(digits.Digits, "_generate_examples", generate_together)
    config = tiny_config()
    config.data.data_dir = str(tmp_path)
    results, errors = [], []

    def first_use():
        try:
            results.append(len(datasets._tfds_source(config, "eval", str(tmp_path))))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [digits.NUM_TEST] * 2
    assert [p.name for p in (tmp_path / "digits").iterdir()] == ["1.0.0"]
