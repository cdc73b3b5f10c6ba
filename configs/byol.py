"""BYOL (Grill et al. 2020): online network + predictor regresses an EMA target network.

Launch (from the repository root):
  python -m sslx.main --config configs/byol.py --workdir runs/byol                 # Fashion-MNIST
  python -m sslx.main --config configs/byol.py:cifar10 --workdir runs/byol_c10
  python -m sslx.main --config configs/byol.py:imagenet --workdir runs/byol_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: ResNet-18, 1000 epochs, batch 256: 92.6% linear top-1 (solo-learn's table).
  imagenet: ResNet-50, 1000 epochs at batch 4096: 74.3% linear top-1 (BYOL Table 1).
The EMA scaling rule: at another batch_size the momentum becomes base ** (batch_size /
ema.reference_batch_size) while optim.lr_scaling scales the learning rate
(--config.ema.scaling_rule=False turns the momentum rule off).
TPU: fits a v5p-32 (16 chips, 256 images per chip) per benchmarks/compile_check.py (XLA's
  peak 17.9 of 95 GiB per chip; results/compile_check.md).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("byol", dataset)
  # norm: BatchNorm in the heads as BYOL; "layer" or "none" make every example's gradient
  # independent of the rest of its batch (the EMA scaling-rule test needs that).
  c.projector = ml_collections.ConfigDict({"hidden": (4096,), "out_features": 256,
                                           "norm": "batch"})
  c.predictor = ml_collections.ConfigDict({"hidden": (4096,), "norm": "batch"})
  c.optim.name = "lars"
  if dataset == "fashion_mnist":
    c.projector.hidden = (512,)
    c.projector.out_features = 128
    c.predictor.hidden = (512,)
    # LARS's trust ratio (coefficient 1e-3) keeps each step small: the table's 200 steps
    # learnt little at lr 1.0. 200 steps, kNN / linear top-1 on the first 10k train / 2k test
    # images (random encoder 74.8 / 78.0): lr 1.0 74.7 / 76.7, 2.0 75.8 / 78.7, 4.0 76.8 / 80.1,
    # 8.0 76.8 / 80.9 (EMA base 0.9 at lr 1.0, or 0.96 at lr 8.0: no better).
    c.optim.lr = 8.0
    c.optim.weight_decay = 1e-5
    c.optim.warmup_steps = 30
    c.ema = common.ema_config(base=0.99, reference_batch_size=256)
  elif dataset == "cifar10":  # solo-learn scripts/pretrain/cifar/byol.yaml
    c.batch_size = 256
    c.total_steps = common.epochs_to_steps(1000, dataset, c.batch_size)
    c.optim.lr = 1.0
    c.optim.weight_decay = 1e-5
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
    c.ema = common.ema_config(base=0.99, reference_batch_size=256)
    c.augment_view1 = ml_collections.ConfigDict({"solarize_prob": 0.0})
    c.augment_view2 = ml_collections.ConfigDict({"solarize_prob": 0.2})
  else:  # BYOL Sec. 3.3 and App. C: LARS lr 0.2 x B/256, wd 1.5e-6, tau 0.996 -> 1
    c.total_steps = common.epochs_to_steps(1000, dataset, c.batch_size)
    c.optim.lr = 0.2
    c.optim.weight_decay = 1.5e-6
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
    c.ema = common.ema_config(base=0.996, reference_batch_size=4096)
    # BYOL Table 6: asymmetric blur and solarisation, saturation 0.2.
    common.byol_views(c)
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.projector.hidden = (32,)
    c.projector.out_features = 16
    c.predictor.hidden = (32,)
  c.lock()
  return c
