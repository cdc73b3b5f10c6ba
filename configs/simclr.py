"""SimCLR (Chen et al. 2020): NT-Xent between two views through an MLP projector.

Launch (from the repository root):
  python -m sslx.main --config configs/simclr.py --workdir runs/simclr            # Fashion-MNIST
  python -m sslx.main --config configs/simclr.py:cifar10 --workdir runs/simclr_c10
  python -m sslx.main --config configs/simclr.py:imagenet --workdir runs/simclr_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: the main job's results table (kNN / linear top-1 on the test split; README).
  cifar10: ResNet-18, 1000 epochs, batch 512: ~91% kNN (solo-learn's table; SimCLR's App. B.9
    reports 94.0% linear with ResNet-50 and batch 1024).
  imagenet: ResNet-50, 1000 epochs at batch 4096, LARS lr 0.3 x B/256: 69.3% linear top-1
    (SimCLR Table 6; 100 epochs: 66.5%).
TPU: sized for a v5p-32 (16 chips, 256 images per chip); benchmarks/compile_check.py
  compiles its step for that slice and reads XLA's per-chip memory (results/compile_check.md).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("simclr", dataset)
  c.projector = ml_collections.ConfigDict()
  # "batch" (the paper's) | "layer" | "none"; BatchNorm-free for optim.grad_cache_chunks > 1.
  c.projector.norm = "batch"
  c.loss = ml_collections.ConfigDict()
  c.optim.name = "lars"
  if dataset == "fashion_mnist":
    c.projector.hidden = (256,)
    c.projector.out_features = 64
    c.loss.temperature = 0.1
    c.optim.lr = 1.0
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = 50
  elif dataset == "cifar10":  # SimCLR App. B.9: LARS, lr 1.0 x B/256, T 0.5, wd 1e-6
    c.projector.hidden = (2048,)
    c.projector.out_features = 128
    c.loss.temperature = 0.5
    c.optim.lr = 1.0
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
  else:  # SimCLR Sec. B.6 / Table 6: LARS lr 0.3 x B/256, T 0.1, wd 1e-6, 10 warm-up epochs
    c.total_steps = common.epochs_to_steps(1000, dataset, c.batch_size)
    c.projector.hidden = (2048,)
    c.projector.out_features = 128
    c.loss.temperature = 0.1
    c.optim.lr = 0.3
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.projector.hidden = (32,)
    c.projector.out_features = 16
  c.lock()
  return c
