"""MoCo v3 (Chen, Xie and He 2021): symmetric in-batch InfoNCE of predictions against EMA keys.

Launch (from the repository root):
  python -m sslx.main --config configs/moco_v3.py --workdir runs/moco_v3            # Fashion-MNIST
  python -m sslx.main --config configs/moco_v3.py:cifar10 --workdir runs/moco_v3_c10
  python -m sslx.main --config configs/moco_v3.py:imagenet --workdir runs/moco_v3_in
Variants: `smoke` (seconds; used by the tests), combinable with a dataset.
Expected:
  fashion_mnist: its row of the methods table (docs/results/methods.md).
  cifar10: ResNet-18, 1000 epochs, batch 256: 93.1% linear top-1 (solo-learn's table and
    scripts/pretrain/cifar/mocov3.yaml).
  imagenet: ViT-B/16, 300 epochs at batch 4096: 76.7% linear top-1 (MoCo v3 Table 1 and
    facebookresearch/moco-v3 CONFIG.md; ViT-S/16 with --config.model.vit.variant=S/16: 73.2%).
Not implemented: moco-v3's --stop-grad-conv1 (a frozen random patch projection for ViT
stability): AdamW's decoupled weight decay would still shrink weights that get no gradient here.
The EMA scaling rule: at another batch_size the momentum becomes base ** (batch_size /
ema.reference_batch_size) while optim.lr_scaling scales the learning rate
(--config.ema.scaling_rule=False turns the momentum rule off).
TPU: fits a v5p-32 (16 chips, 256 images per chip) per benchmarks/compile_check.py: XLA's peak
  9.2 of 95 GiB per chip with remat per block and scanned blocks (without remat: 127 GiB, which
  is why the preset sets model.remat=block).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, args = common.parse_variant(arg)
  c = common.method_config("moco_v3", dataset)
  # moco-v3 builder.py: Linear (no bias) -> BN -> ReLU blocks, BN without affine on the output;
  # 2-layer projector for ResNets, 3-layer for ViTs; the ResNet predictor has no output BN.
  c.projector = ml_collections.ConfigDict({"hidden": (4096,), "out_features": 256,
                                           "norm": "batch", "norm_last": True})
  c.predictor = ml_collections.ConfigDict({"hidden": (4096,), "norm_last": False})
  c.loss = ml_collections.ConfigDict({"temperature": 0.2})
  if dataset == "fashion_mnist":
    c.projector.hidden = (512,)
    c.projector.out_features = 128
    c.predictor.hidden = (512,)
    c.optim.name = "lars"
    c.optim.lr = 1.0
    c.optim.weight_decay = 1e-5
    c.optim.warmup_steps = 30
    c.ema = common.ema_config(base=0.99, reference_batch_size=256)
  elif dataset == "cifar10":  # solo-learn scripts/pretrain/cifar/mocov3.yaml (ResNet-18)
    c.batch_size = 256
    c.total_steps = common.epochs_to_steps(1000, dataset, c.batch_size)
    c.optim.name = "lars"
    c.optim.lr = 0.3
    c.optim.weight_decay = 1e-6
    c.optim.trust_coefficient = 0.02  # solo-learn's eta (its clip_lr is not implemented here)
    c.optim.warmup_steps = common.epochs_to_steps(10, dataset, c.batch_size)
    c.ema = common.ema_config(base=0.99, reference_batch_size=256)
    # solo-learn's asymmetric augmentations: saturation 0.2, solarisation on view 2 only.
    c.augment.saturation = 0.2
    c.augment_view1 = ml_collections.ConfigDict({"solarize_prob": 0.0})
    c.augment_view2 = ml_collections.ConfigDict({"solarize_prob": 0.2})
  else:  # moco-v3 CONFIG.md, ViT-Base: AdamW lr 1.5e-4 x B/256, wd 0.1, 40 warm-up epochs
    c.model.name = "vit"
    c.model.vit.variant = "B/16"
    c.batch_size = 4096
    # Activations recomputed per block in the backward pass and the identical blocks scanned
    # (compiled once): the settings benchmarks/compile_check.py checks this preset's slice with.
    c.model.remat = "block"
    c.model.vit.scan = True
    c.total_steps = common.epochs_to_steps(300, dataset, c.batch_size)
    c.projector.hidden = (4096, 4096)
    c.predictor.norm_last = True
    c.optim.name = "adamw"
    c.optim.lr = 1.5e-4
    c.optim.weight_decay = 0.1
    c.optim.warmup_steps = common.epochs_to_steps(40, dataset, c.batch_size)
    c.ema = common.ema_config(base=0.99, reference_batch_size=4096)
    # moco-v3 main_moco.py: BYOL's asymmetric blur / solarisation, saturation 0.2, crop 0.08.
    common.byol_views(c)
  if args.get("smoke"):
    common.shrink_for_smoke(c)
    c.projector.hidden = (32,) * len(c.projector.hidden)
    c.projector.out_features = 16
    c.predictor.hidden = (32,)
  c.lock()
  return c
