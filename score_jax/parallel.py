"""Processes, devices and the data-parallel layout: `initialize` (called first by every mode),
the one-axis 'data' mesh, batch divisibility checks, and placing arrays on the mesh."""
from __future__ import annotations

import importlib.util
import os
import socket
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# Environment variables of the launchers whose jobs `jax.distributed.initialize()` detects itself.
_CLUSTER_SIGNALS = {
    "SLURM": lambda env: int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) > 1,
    "Open MPI": lambda env: "OMPI_MCA_orte_hnp_uri" in env,
    "Cloud TPU pod": lambda env: "," in env.get("TPU_WORKER_HOSTNAMES", ""),
    "Kubernetes": lambda env: "KUBERNETES_SERVICE_HOST" in env and "JOB_COMPLETION_INDEX" in env
    and importlib.util.find_spec("kubernetes") is not None,
}


def detected_cluster(env=None) -> str | None:
    """The name of the multi-process launcher the environment describes, or None."""
    env = os.environ if env is None else env
    return next((name for name, present in _CLUSTER_SIGNALS.items() if present(env)), None)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> bool:
    """Starts `jax.distributed` for a multi-process run; returns whether it did.

    Explicit arguments (or `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) win;
    else a launcher jax detects (SLURM, Open MPI, Cloud TPU pod, indexed Kubernetes job); else
    nothing starts. Raises ValueError naming the flag on inconsistent arguments, RuntimeError when
    the coordinator does not answer within `timeout_s` seconds."""
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    explicit = (coordinator_address, num_processes, process_id)
    if all(v is None for v in explicit):
        cluster = detected_cluster(env)
        if cluster is None:
            return False
        _start(f"{cluster} job", timeout_s)
        return True
    if None in explicit:
        missing = [flag for flag, v in zip(("--coordinator_address", "--num_processes",
                                            "--process_id"), explicit) if v is None]
        raise ValueError(f"a multi-process run needs --coordinator_address, --num_processes and "
                         f"--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                         f"JAX_PROCESS_ID); missing: {', '.join(missing)}")
    if num_processes < 1:
        raise ValueError(f"--num_processes={num_processes} must be >= 1")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must lie in [0, --num_processes="
                         f"{num_processes})")
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator_address={coordinator_address!r} must be host:port")
    what = f"process {process_id} of {num_processes}, coordinator {coordinator_address}"
    if process_id != 0:
        # jax's client aborts the whole process (no exception) when the coordinator never
        # answers, so the others first wait here, where a timeout can be reported.
        _wait_for_coordinator(host, int(port), what, timeout_s)
    _start(what, timeout_s, coordinator_address=coordinator_address,
           num_processes=num_processes, process_id=process_id)
    return True


def _wait_for_coordinator(host: str, port: int, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), port), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"could not start the distributed runtime ({what}) within "
                                   f"{timeout_s} s: nothing answers at {host}:{port} ({e})") from e
            time.sleep(0.5)


def _start(what: str, timeout_s: int, **kwargs) -> None:
    # CPU devices of different processes exchange collectives through gloo (XLA:CPU has no
    # default for that; accelerators are unaffected).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(initialization_timeout=int(timeout_s), **kwargs)
    except Exception as e:  # jax raises XlaRuntimeError/ValueError with a long gRPC status
        raise RuntimeError(f"could not start the distributed runtime ({what}) within "
                           f"{timeout_s} s: {type(e).__name__}: {str(e).splitlines()[0]}") from e


def make_mesh() -> jax.sharding.Mesh:
    """All devices of all processes on one Auto-typed 'data' axis."""
    # Auto axis type: XLA propagates the batch sharding through the network.
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh, leading: int = 0) -> NamedSharding:
    """The batch axis (after `leading` unsharded axes) split over 'data'."""
    return NamedSharding(mesh, P(*([None] * leading), "data"))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, what: str = "training.batch_size") -> int:
    """The per-process batch; ValueError unless `batch_size` divides over devices and processes."""
    for n, of in ((jax.device_count(), "devices"), (jax.process_count(), "processes")):
        if batch_size < 1 or batch_size % n:
            raise ValueError(f"{what}={batch_size} is not a positive multiple of the number of "
                             f"{of} ({n}); choose a multiple of {n}")
    return batch_size // jax.process_count()


def global_batch(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global array whose process-local slice is `local` (each process passes its own)."""
    return jax.make_array_from_process_local_data(sharding, local)


def to_host(x) -> np.ndarray:
    """The whole (possibly multi-process) array `x` as numpy on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def is_main_process() -> bool:
    """Process 0 writes the outputs of a multi-process run."""
    return jax.process_index() == 0


def check_sharding(shape, sharding: NamedSharding | None) -> None:
    """Raises ValueError unless the leading axis of `shape` divides over `sharding`'s devices."""
    if sharding is None:
        return
    spec = sharding.spec
    axes = spec[0] if len(spec) else None
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    shards = int(np.prod([sharding.mesh.shape[a] for a in names])) if names else 1
    if shape[0] % shards:
        raise ValueError(f"batch size {shape[0]} is not divisible by the {shards} devices the "
                         f"batch is sharded over ({sharding.spec})")


def constrain(x, sharding: NamedSharding | None):
    """Shards x as `sharding` inside jit; works for explicit-axes meshes without a mesh context."""
    if sharding is None:
        return x
    mesh = sharding.mesh
    # An Auto-typed copy of the mesh: no mesh context needed for `jax.make_mesh`'s explicit axes.
    auto = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                             axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
    return jax.lax.with_sharding_constraint(x, NamedSharding(auto, sharding.spec))
