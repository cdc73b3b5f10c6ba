"""The inputs every loss benchmark uses, built from NumPy alone so the sslx (jax) and lightly
(torch) benchmarks time exactly the same arrays.

Each case maps a loss name to a function ``(rng, batch, dim) -> dict of float32 arrays``; the
keyword names are the sslx argument names.
"""

import numpy as np


def _pair(rng, batch, dim):
  z1 = rng.standard_normal((batch, dim), dtype=np.float32)
  z2 = (z1 + 0.5 * rng.standard_normal((batch, dim), dtype=np.float32)).astype(np.float32)
  return z1, z2


def two_views(rng, batch, dim):
  z1, z2 = _pair(rng, batch, dim)
  return {"z1": z1, "z2": z2}


def prediction_and_target(rng, batch, dim):
  p, z = _pair(rng, batch, dim)
  return {"p": p, "z": z}


def query_key_queue(rng, batch, dim, queue_size=16384):
  q, k = _pair(rng, batch, dim)
  return {"query": q, "key": k,
          "queue": rng.standard_normal((queue_size, dim), dtype=np.float32)}


def dino_logits(rng, batch, dim, global_views=2, local_views=6):
  """``dim`` is the number of prototypes K (65536 in DINO; smaller here)."""
  return {
      "student_logits": rng.standard_normal((global_views + local_views, batch, dim),
                                            dtype=np.float32),
      "teacher_logits": rng.standard_normal((global_views, batch, dim), dtype=np.float32),
      "center": np.zeros((dim,), np.float32),
  }


def swav_scores(rng, batch, dim, views=8):
  """Prototype scores (cosines, in [-1, 1]) of ``views`` crops for ``dim`` prototypes."""
  scores = rng.uniform(-1, 1, (views, batch, dim)).astype(np.float32)
  return {"scores_per_view": scores}


def single(rng, batch, dim):
  return {"z": rng.standard_normal((batch, dim), dtype=np.float32)}
