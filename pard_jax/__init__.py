"""pard_jax: parallel-draft speculative decoding (PARD, ParallelSpec) in JAX/Flax."""

__version__ = "0.1.0"
