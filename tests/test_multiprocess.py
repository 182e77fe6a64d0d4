"""Two processes (one CPU device each, gloo collectives, coordinator on localhost) compute what one
process with two devices computes: training, sampling and likelihood on a tiny digits model, and
each restores the checkpoints the other wrote."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from score_jax import checkpoints as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--config.model.nf=8", "--config.training.batch_size=16", "--config.training.n_iters=24",
        "--config.training.log_freq=1", "--config.training.eval_freq=12",
        "--config.training.snapshot_freq=12", "--config.training.snapshot_freq_for_preemption=6",
        "--config.training.snapshot_sampling=False", "--config.training.final_eval=False",
        "--config.model.num_scales=10", "--config.eval.batch_size=150",
        "--config.eval.num_samples=32", "--config.eval.bpd_num_repeats=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, cache) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _launch(mode, workdir, data_dir, cache, processes: int, extra=()):
    """Starts `main.py --mode MODE`: one process with two devices, or two with one each."""
    cmd = [sys.executable, "main.py", "--config=configs/digits.py", f"--workdir={workdir}",
           f"--mode={mode}", f"--config.data.data_dir={data_dir}", *TINY, *extra]
    if processes == 1:
        return [subprocess.Popen(cmd, cwd=ROOT, env=_env(2, cache), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)]
    port = _free_port()
    return [subprocess.Popen(cmd + [f"--coordinator_address=localhost:{port}",
                                    "--num_processes=2", f"--process_id={i}",
                                    "--distributed_timeout=120"],
                             cwd=ROOT, env=_env(1, cache), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _wait(procs):
    try:
        outs = [p.communicate(timeout=1800)[0] for p in procs]
    finally:
        for p in procs:  # no orphans when a run fails or times out
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("mp")
    data, cache = base / "tfds", base / "cache"
    # Prepare the dataset once (two first users of a fresh data dir would race).
    _wait(_launch("train", base / "prep", data, cache, 1, ["--config.training.n_iters=1"]))
    single = _launch("train", base / "single", data, cache, 1)
    multi = _launch("train", base / "multi", data, cache, 2)
    _wait(single + multi)
    return base, data, cache


def _rows(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_two_processes_train_as_one_process_with_two_devices(runs):
    base, _, _ = runs
    single, multi = _rows(base / "single"), _rows(base / "multi")
    assert len(single) == len(multi) == 24 + 2  # 24 train rows, 2 eval rows
    for a, b in zip(single, multi):
        assert a["step"] == b["step"]
        for key in ("loss", "grad_norm", "lr", "eval_loss"):
            if key in a:
                # Same data rows, noise and all-reduce tree: equal to float32 rounding.
                np.testing.assert_allclose(b[key], a[key], rtol=2e-6, err_msg=f"{key} {a['step']}")
    # The parameters after 24 steps, restored in this (one) process from both workdirs.
    p1, s1 = ckpt_lib.restore_for_sampling(str(base / "single"))
    p2, s2 = ckpt_lib.restore_for_sampling(str(base / "multi"))
    assert s1 == s2 == 24
    flat1, flat2 = (np.concatenate([np.ravel(v) for v in __import__("jax").tree.leaves(p)])
                    for p in (p1, p2))
    np.testing.assert_allclose(flat2, flat1, rtol=0, atol=2e-6 * np.abs(flat1).max())


def test_sample_and_likelihood_across_layouts(runs):
    """Two processes sample and compute bits/dim from the one-process checkpoint, one process from
    the two-process checkpoint: the same numbers."""
    base, data, cache = runs
    a = _launch("sample", base / "single", data, cache, 2)
    b = _launch("sample", base / "multi", data, cache, 1)
    outs = _wait(a + b)
    [x2], [x1] = ([np.load(p)["samples"] for p in (base / w / "samples" / "ckpt_24").glob(
        "*/samples_0.npz")] for w in ("single", "multi"))  # one sampler's folder in each
    assert x1.shape == (150, 8, 8, 1) and _last_json(outs[0])["num_samples"] == 150
    np.testing.assert_allclose(x2, x1, atol=1e-4)
    a = _launch("likelihood", base / "single", data, cache, 2)
    b = _launch("likelihood", base / "multi", data, cache, 1)
    outs = _wait(a + b)
    bpd2, bpd1 = _last_json(outs[0]), _last_json(outs[2])
    assert bpd2["bpd_examples"] == bpd1["bpd_examples"] == 300
    np.testing.assert_allclose(bpd2["bpd"], bpd1["bpd"], rtol=1e-4)


def test_bad_distributed_flags_name_the_flag(tmp_path):
    cmd = [sys.executable, "main.py", "--config=configs/digits.py", f"--workdir={tmp_path}",
           "--mode=sample"]
    for extra, message in [
            (["--coordinator_address=localhost:1", "--num_processes=2", "--process_id=2"],
             "--process_id=2 must lie in [0, --num_processes=2)"),
            (["--coordinator_address=localhost:1", "--num_processes=2"], "missing: --process_id"),
            (["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"],
             "must be host:port")]:
        out = subprocess.run(cmd + extra, cwd=ROOT, env=_env(1, tmp_path / "c"),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode != 0 and message in out.stderr + out.stdout, out.stderr[-2000:]
    # A coordinator nobody answers: a clear error after the timeout, not a hang.
    out = subprocess.run(cmd + [f"--coordinator_address=localhost:{_free_port()}",
                                "--num_processes=2", "--process_id=1", "--distributed_timeout=5"],
                         cwd=ROOT, env=_env(1, tmp_path / "c"), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    assert "could not start the distributed runtime" in out.stderr + out.stdout, out.stderr[-3000:]
