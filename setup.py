"""score_jax: score-based generative modeling through SDEs in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="score_jax",
    version="0.1.0",
    description="Score-based generative modeling through SDEs (Song et al., ICLR 2021) in JAX/Flax",
    packages=find_packages(include=["score_jax", "score_jax.*", "configs", "configs.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "diffrax>=0.7.2",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-datasets>=4.9.10",
        "grain>=0.2.18",
        "ml-collections>=1.1.0",
        "absl-py>=2.1",
        "tensorboardX>=2.6",   # TensorBoard event files without TensorFlow
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "scikit-learn>=1.4",   # ships the 8x8 digits of the embedded default
        "importlib_resources>=6",  # tfds.data_source needs it without TensorFlow
        "pillow>=10",
        "numpy>=1.26",
        "scipy>=1.11",         # Powell's method of solvers.fit_time_grid (--mode fit_grid)
    ],
    extras_require={
        "cuda12": ["jax[cuda12]>=0.10.2"],
        "convert": ["torch>=2.6"],
        # diffusers folders: safetensors weights; `--checkpoint hf://...` downloads.
        "hub": ["huggingface_hub>=0.23", "safetensors>=0.4"],
        # benchmarks/peer_samplers.py; k-diffusion itself: pip install --no-deps k-diffusion
        # torchsde trampoline torchdiffeq (its full requirements pull a CUDA torch and more).
        "bench": ["torch>=2.6", "diffusers>=0.30"],
        # nbclient/ipykernel/nbformat execute notebooks/walkthrough.ipynb in the tests; diffusers
        # builds the reference UNet2DModels of tests/test_hub.py (pulls huggingface_hub,
        # safetensors).
        "test": ["pytest>=8", "pytest-xdist>=3.6", "torch>=2.6", "nbclient>=0.10",
                 "ipykernel>=6.29", "nbformat>=5.10", "diffusers>=0.42", "huggingface_hub>=0.23",
                 "safetensors>=0.4"],
    },
)
