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


def msn_inputs(rng, batch, dim, views=11, prototypes=1024):
  """MSN: 11 anchor views (1 random + 10 focal), ``dim``-d representations, 1024 prototypes."""
  return {
      "anchor_views": rng.standard_normal((views, batch, dim), dtype=np.float32),
      "target_views": rng.standard_normal((batch, dim), dtype=np.float32),
      "prototypes": rng.standard_normal((prototypes, dim), dtype=np.float32),
  }


def ibot_inputs(rng, batch, dim, views=2, patches=196):
  """iBOT patch logits of ``views`` global views of ViT-B/16 at 224 px (196 patches)."""
  return {
      "student_patch_logits": rng.standard_normal((views, batch, patches, dim), dtype=np.float32),
      "teacher_patch_logits": rng.standard_normal((views, batch, patches, dim), dtype=np.float32),
      "mask": rng.uniform(size=(views, batch, patches)) < 0.3,
      "center": np.zeros((dim,), np.float32),
  }


# name -> (input builder, global batch, dim, which inputs are differentiated). Sizes are what a
# pod-scale run uses per step where this 2-core CPU can time them in seconds; the docstrings of
# the two benchmark scripts say where they are smaller than the papers'.
CASES = {
    "nt_xent": (two_views, 4096, 128, ("z1", "z2")),
    "nt_xent_blockwise": (two_views, 4096, 128, ("z1", "z2")),
    "dcl": (two_views, 4096, 128, ("z1", "z2")),
    "info_nce": (query_key_queue, 4096, 128, ("query",)),
    "negative_cosine": (prediction_and_target, 4096, 2048, ("p",)),
    "barlow_twins": (two_views, 4096, 2048, ("z1", "z2")),
    "vicreg": (two_views, 4096, 2048, ("z1", "z2")),
    "w_mse": (two_views, 4096, 64, ("z1", "z2")),
    "koleo": (single, 4096, 256, ("z",)),
    "dino": (dino_logits, 512, 8192, ("student_logits",)),
    "swav": (swav_scores, 4096, 3000, ("scores_per_view",)),
    "msn": (msn_inputs, 1024, 256, ("anchor_views", "prototypes")),
    "ibot_patch": (ibot_inputs, 32, 8192, ("student_patch_logits",)),
}
