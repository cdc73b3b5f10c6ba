"""Self-supervised losses: pure functions of jax arrays.

This package imports only jax and numpy, so it can be used without the rest of sslx (no flax,
optax, data pipeline or checkpointing).
"""

from sslx.losses.contrastive import nt_xent

__all__ = ["nt_xent"]
