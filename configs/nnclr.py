"""NNCLR (Dwibedi et al. 2021): the positive of a view is its nearest neighbour in a support set.

Launch (from the repository root):
  python -m sslx.main --config configs/nnclr.py --workdir runs/nnclr                # Fashion-MNIST
  python -m sslx.main --config configs/nnclr.py:cifar10 --workdir runs/nnclr_c10
  python -m sslx.main --config configs/nnclr.py:imagenet --workdir runs/nnclr_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: ResNet-18, 1000 epochs, batch 256: 91.88% linear top-1 (solo-learn's table, online
    linear probe; settings of solo-learn scripts/pretrain/cifar/nnclr.yaml).
  imagenet: ResNet-50, 1000 epochs at batch 4096: 75.6% linear top-1 (NNCLR Table 1).
`loss.form`: "paper" (eq. 2 + its column-normalised symmetric term, `sslx.losses.nnclr`) or
"swapped" (eq. 2 averaged over the two views, as solo-learn and lightly do). `support_size`: the
FIFO support set; it starts empty (see experiments/nnclr.py). solo-learn's LARS also clips the
per-layer lr (clip_lr) and excludes biases and norms from adaptation; here biases and norms are
excluded, there is no clip.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("nnclr", dataset)
  # NNCLR Sec. 4.1: projector 3 layers [2048, 2048, 256] with BN after each (the last too),
  # predictor [4096, 256]. projector.norm "layer" (or "none" with norm_last False) for
  # optim.grad_cache_chunks > 1, which needs a BatchNorm-free projector (the predictor may keep it).
  c.projector = ml_collections.ConfigDict(
      {"hidden": (2048, 2048), "out_features": 256, "norm_last": True, "norm": "batch"})
  c.predictor = ml_collections.ConfigDict({"hidden": (4096,)})
  c.loss = ml_collections.ConfigDict({"temperature": 0.1, "form": "paper"})
  c.optim.name = "lars"
  if dataset == "fashion_mnist":
    c.projector.hidden = (512, 512)
    c.projector.out_features = 128
    c.predictor.hidden = (512,)
    c.support_size = 4096  # 16 batches: neighbours from a network at most 16 steps old
    c.optim.lr = 1.0
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = 50
  elif dataset == "cifar10":  # solo-learn scripts/pretrain/cifar/nnclr.yaml
    c.batch_size = 256
    c.total_steps = common.epochs_to_steps(1000, dataset, c.batch_size)
    c.support_size = 65536
    c.loss.temperature = 0.2
    c.loss.form = "swapped"  # solo-learn's symmetrisation
    c.optim.lr = 0.4
    c.optim.weight_decay = 1e-5
    c.optim.trust_coefficient = 0.02
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
    # solo-learn's asymmetric.yaml: saturation 0.2, solarisation on the second view only.
    c.augment.saturation = 0.2
    c.augment_view1 = ml_collections.ConfigDict({"solarize_prob": 0.0})
    c.augment_view2 = ml_collections.ConfigDict({"solarize_prob": 0.2})
  else:  # NNCLR Sec. 4.1: LARS 0.3 x B/256 (4.8 at 4096), wd 1e-6, 10 warm-up epochs, T 0.1
    c.total_steps = common.epochs_to_steps(1000, dataset, c.batch_size)
    c.support_size = 98304
    c.optim.lr = 0.3
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
    # BYOL's augmentations (NNCLR Sec. 4.1): asymmetric blur and solarisation, saturation 0.2.
    common.byol_views(c)
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.projector.hidden = (32, 32)
    c.projector.out_features = 16
    c.predictor.hidden = (32,)
    c.support_size = 4 * c.batch_size
  c.lock()
  return c
