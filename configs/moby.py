"""MoBY (Xie et al. 2021): MoCo v2's queues + BYOL's predictor and EMA target, on a ViT.

Launch (from the repository root):
  python -m sslx.main --config configs/moby.py --workdir runs/moby                  # Fashion-MNIST
  python -m sslx.main --config configs/moby.py:cifar10 --workdir runs/moby_c10
  python -m sslx.main --config configs/moby.py:imagenet --workdir runs/moby_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: no published result (neither the MoBY paper nor solo-learn has a CIFAR recipe); the
    ViT-S/4 preset with MoBY's ImageNet settings (AdamW, drop-path 0.2 / 0, queue 4096).
  imagenet: DeiT-S (ViT-S/16, learned position embedding), 300 epochs at batch 512: 72.8% linear
    top-1 (MoBY abstract and Table 1; SwinTransformer/Transformer-SSL configs/moby_deit_small.yaml). The
    paper's main model, Swin-T (75.0%), is not available in sslx.
The EMA scaling rule: at another batch_size the momentum becomes base ** (batch_size /
ema.reference_batch_size) while optim.lr_scaling scales the learning rate
(--config.ema.scaling_rule=False turns the momentum rule off).
"""

import ml_collections

from configs import common


def _moby_recipe(c, dataset) -> None:
  """Transformer-SSL config.py + moby_deit_small.yaml: AdamW lr 1e-3 per 512 (= 5e-4 per 256),
  betas (0.9, 0.999), wd 0.05, 5 warm-up epochs, cosine to 5e-6 per 512, gradient clipping at
  norm 5, 300 epochs, online drop-path 0.2 (the target's is 0), BYOL's augmentations."""
  c.model.name = "vit"
  c.model.vit.drop_path_rate = 0.2
  c.batch_size = 512
  c.total_steps = common.epochs_to_steps(300, dataset, c.batch_size)
  c.optim.name = "adamw"
  c.optim.lr = 5e-4
  c.optim.weight_decay = 0.05
  c.optim.end_lr_fraction = 5e-6 / 1e-3
  c.optim.grad_clip_norm = 5.0
  c.optim.warmup_steps = common.epochs_to_steps(5, dataset, c.batch_size)
  c.ema = common.ema_config(base=0.99, reference_batch_size=512)
  # AUG.SSL_AUG_TYPE "byol": asymmetric blur and solarisation, saturation 0.2, crop 0.08.
  common.byol_views(c)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("moby", dataset)
  # MoBYMLP: Linear -> BN -> ReLU -> Linear, 4096 hidden, 256 out, for projector and predictor.
  c.projector = ml_collections.ConfigDict({"hidden": (4096,), "out_features": 256,
                                           "norm": "batch", "norm_last": False})
  c.predictor = ml_collections.ConfigDict({"hidden": (4096,), "norm_last": False})
  c.loss = ml_collections.ConfigDict({"temperature": 0.2})
  c.queue_size = 4096
  if dataset == "fashion_mnist":
    c.projector.hidden = (512,)
    c.projector.out_features = 128
    c.predictor.hidden = (512,)
    c.optim.name = "lars"
    c.optim.lr = 1.0
    c.optim.weight_decay = 1e-5
    c.optim.warmup_steps = 30
    c.ema = common.ema_config(base=0.99, reference_batch_size=256)
  elif dataset == "cifar10":
    _moby_recipe(c, dataset)
    c.augment_view1.blur_prob = 0.0  # no blur at 32 pixels, as the cifar10 preset
    c.augment_view2.blur_prob = 0.0
  else:
    _moby_recipe(c, dataset)
    c.model.vit.variant = "S/16"
    c.model.vit.pos_embed = "learned"  # DeiT's
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.projector.hidden = (32,)
    c.projector.out_features = 16
    c.predictor.hidden = (32,)
    c.queue_size = 64
  c.lock()
  return c
