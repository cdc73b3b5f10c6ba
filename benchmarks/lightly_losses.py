"""The torch side of benchmarks/losses.py: the same losses from lightly on the same inputs.

Run by benchmarks/losses.py with the interpreter of the venv benchmarks/setup_lightly.sh makes;
prints one JSON line {name: {"seconds": median forward + backward}, "_version": ...}. Losses
lightly does not have are left out.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loss_cases  # noqa: E402
from lightly import loss as L  # noqa: E402


def _views(x):
  return list(x)  # [V, b, K] -> V tensors of [b, K]


def lightly_case(name, dim):
  """A function of the case's torch tensors (by sslx argument name) returning the loss."""
  if name == "nt_xent":
    fn = L.NTXentLoss(temperature=0.1)
    return lambda t: fn(t["z1"], t["z2"])
  if name == "dcl":
    fn = L.DCLLoss(temperature=0.1)
    return lambda t: fn(t["z1"], t["z2"])
  if name == "negative_cosine":
    fn = L.NegativeCosineSimilarity()
    return lambda t: fn(t["p"], t["z"].detach())
  if name == "barlow_twins":
    fn = L.BarlowTwinsLoss(lambda_param=0.0051)
    return lambda t: fn(t["z1"], t["z2"])
  if name == "vicreg":
    fn = L.VICRegLoss()
    return lambda t: fn(t["z1"], t["z2"])
  if name == "w_mse":
    fn = L.WMSELoss(embedding_dim=dim, w_size=256)
    return lambda t: fn(torch.cat([t["z1"], t["z2"]]))
  if name == "koleo":
    fn = L.KoLeoLoss()
    return lambda t: fn(t["z"])
  if name == "dino":
    fn = L.DINOLoss(output_dim=dim, teacher_temp=0.04, warmup_teacher_temp=0.04)
    return lambda t: fn(_views(t["teacher_logits"]), _views(t["student_logits"]), epoch=0)
  if name == "swav":
    fn = L.SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    return lambda t: fn(_views(t["scores_per_view"][:2]), _views(t["scores_per_view"][2:]))
  if name == "msn":
    fn = L.MSNLoss(temperature=0.1)
    return lambda t: fn(t["anchor_views"].reshape(-1, t["anchor_views"].shape[-1]),
                        t["target_views"], t["prototypes"])
  if name == "ibot_patch":
    fn = L.IBOTPatchLoss(output_dim=dim, teacher_temp=0.07)

    def ibot(t):
      # lightly takes only the masked tokens ([masked, K]) and a [images, 14, 14] mask.
      mask = t["mask"].flatten(0, 1)
      side = int(mask.shape[-1] ** 0.5)
      student = t["student_patch_logits"].flatten(0, 1)[mask]
      teacher = t["teacher_patch_logits"].flatten(0, 1)[mask]
      return fn(teacher, student, mask.reshape(-1, side, side))
    return ibot
  return None


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--names", required=True)
  parser.add_argument("--scale", type=float, default=1.0)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  import lightly
  out = {"_version": f"lightly {lightly.__version__}, torch {torch.__version__}"}
  for name in args.names.split(","):
    builder, batch, dim, grad_names = loss_cases.CASES[name]
    fn = lightly_case(name, dim)
    if fn is None:
      continue
    inputs = builder(np.random.default_rng(0), int(batch * args.scale), dim)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}

    def step():
      leaves = {k: (v.clone().requires_grad_(True) if k in grad_names else v)
                for k, v in tensors.items()}
      fn(leaves).backward()

    try:
      for _ in range(args.warmup):
        step()
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    except Exception as e:  # an API change in lightly must not lose the other rows
      print(f"lightly {name} failed: {e!r}", file=sys.stderr, flush=True)
      continue
    out[name] = {"seconds": float(np.median(times))}
    print(f"lightly {name}: {1e3 * out[name]['seconds']:.1f} ms", file=sys.stderr, flush=True)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
