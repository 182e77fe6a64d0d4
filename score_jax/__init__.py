"""score_jax: score-based generative modeling through SDEs (Song et al., ICLR 2021) in JAX/Flax."""
import importlib.metadata
import os

__version__ = "0.1.0"

# XLA:CPU flag set at import, before jax starts its CPU backend (it reads XLA_FLAGS then, not at
# `import jax`). jaxlib 0.10 hands every convolution to YNNPACK, which on x86 CPUs runs our 3x3
# convolutions 1.3-2.4x slower than XLA's own (Eigen) convolution; this keeps YNNPACK for the
# reductions and dots it also handles and takes it off convolutions only (README, Benchmarks:
# NCSN++ forward pass 1.4x faster on a 2-core CPU). GPU/TPU backends ignore XLA:CPU flags.
_CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# Set to "1" to leave XLA_FLAGS as it is.
KEEP_XLA_FLAGS_ENV = "SCORE_JAX_KEEP_XLA_FLAGS"


def _cpu_convolutions_without_ynnpack() -> None:
    # Only on jaxlib 0.10: an XLA that does not know a flag aborts.
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get(KEEP_XLA_FLAGS_ENV) == "1" or "ynn_fusion_type" in flags:
        return
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    if version.split(".")[:2] == ["0", "10"]:
        os.environ["XLA_FLAGS"] = f"{flags} {_CPU_CONV_FLAG}".strip()


_cpu_convolutions_without_ynnpack()
