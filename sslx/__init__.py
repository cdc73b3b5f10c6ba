"""sslx: self-supervised representation learning in JAX.

Losses (`sslx.losses`) need jax only; the rest of the library builds on flax, optax, orbax
and grain.
"""

__version__ = "0.1.0"
