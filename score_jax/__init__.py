"""score_jax: score-based generative modeling through SDEs (Song et al., ICLR 2021) in JAX/Flax."""
__version__ = "0.1.0"
