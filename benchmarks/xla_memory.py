"""Per-device bytes of sharded arrays and of compiled XLA programs, shared by the memory
benchmarks (sharding.py on fake CPU devices, compile_check.py on TPU topologies).
"""

import math

import numpy as np


def shard_bytes(shape, dtype, named_sharding) -> int:
  """Bytes of one array's shard on one device (every shard has this shape: sslx's rules only
  shard dimensions the mesh axes divide)."""
  return math.prod(named_sharding.shard_shape(tuple(shape))) * np.dtype(dtype).itemsize


def memory_analysis(compiled) -> dict | None:
  """`compiled.memory_analysis()` as a dict of bytes per device (None where the backend gives
  none), with `peak_estimate_bytes`: what XLA holds at once at most, the arguments, the outputs
  not written over donated arguments (`alias`) and the scratch (`temp`)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  out = {"argument_bytes": int(stats.argument_size_in_bytes),
         "output_bytes": int(stats.output_size_in_bytes),
         "alias_bytes": int(stats.alias_size_in_bytes),
         "temp_bytes": int(stats.temp_size_in_bytes),
         "generated_code_bytes": int(stats.generated_code_size_in_bytes)}
  out["peak_estimate_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                                + out["temp_bytes"])
  return out
