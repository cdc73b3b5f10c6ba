"""The train state: everything a step reads and writes, as one pytree that orbax saves whole."""

from typing import Any, NamedTuple

import jax


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar: number of optimizer steps taken
  params: Any  # trained by gradient
  model_state: dict  # non-trainable variables of the method (batch stats, EMA teachers, queues)
  opt_state: Any
  rng: jax.Array  # raw uint32 PRNG key; the step's key is fold_in(rng, step)
  nonfinite_steps: jax.Array  # int32 scalar: steps whose loss or gradient was NaN / inf

  @property
  def variables(self) -> dict:
    """The Method contract's variables: params plus the non-trainable state."""
    return {"params": self.params, **self.model_state}
